/* spawn.c: run one command and measure it as a user would feel it, for
 * benchmarks/startup.py.
 *
 * It forks and execs COMMAND with stdin from /dev/null (or, with -t, from a
 * fresh pseudo-terminal, as at an interactive shell), its stdout on a pipe
 * read here as it comes, its stderr passed through. It copies the command's
 * output to its own stdout and, at the end, writes one line to stderr:
 *
 *   spawn WALL_NS CPU_NS MAXRSS_KIB TAIL_NS STATUS
 *
 * WALL: fork to wait4; CPU and MAXRSS: the child's rusage from wait4; TAIL:
 * from the arrival of the last output byte to wait4 (-1 without output);
 * STATUS: the exit status (128+N for a signal).
 *
 * Why a C program: Linux carries a parent's peak RSS into a forked child at
 * exec (exec_mmap records the old mm's high-water mark in the child's
 * maxrss), so the spawner must be small for the child's peak RSS to be the
 * child's own; and a small parent also reads the pipe without delay.
 *
 * usage: spawn [-t] COMMAND [ARG...]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(125); }

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(int argc, char **argv)
{
    int first = 1, terminal = 0;
    if (argc > 1 && strcmp(argv[1], "-t") == 0) { terminal = 1; first = 2; }
    if (argc <= first) { fprintf(stderr, "usage: %s [-t] COMMAND [ARG...]\n", argv[0]); return 2; }

    int input = -1;
    if (terminal) {
        int master = posix_openpt(O_RDWR | O_NOCTTY);
        if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0) die("posix_openpt");
        input = open(ptsname(master), O_RDWR | O_NOCTTY);
        /* the master stays open in this process: the terminal lives on */
    } else {
        input = open("/dev/null", O_RDONLY);
    }
    if (input < 0) die("stdin");
    int out[2];
    if (pipe(out) < 0) die("pipe");

    long long started = now_ns();
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        dup2(input, 0);
        dup2(out[1], 1);
        close(out[0]);
        close(out[1]);
        close(input);
        execvp(argv[first], argv + first);
        perror(argv[first]);
        _exit(127);
    }
    close(out[1]);
    long long last = -1;
    char buffer[65536];
    for (;;) {
        ssize_t n = read(out[0], buffer, sizeof buffer);
        if (n < 0) die("read");
        if (n == 0) break;
        last = now_ns();
        if (write(1, buffer, (size_t)n) != n) die("write");
    }
    int status;
    struct rusage usage;
    if (wait4(pid, &status, 0, &usage) < 0) die("wait4");
    long long ended = now_ns();
    long long cpu = (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) * 1000000000LL +
                    (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) * 1000LL;
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    fprintf(stderr, "spawn %lld %lld %ld %lld %d\n", ended - started, cpu, usage.ru_maxrss,
            last < 0 ? -1 : ended - last, code);
    return 0;
}
