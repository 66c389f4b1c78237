/* guest.h: the few things a freestanding minikvm guest needs.
 *
 * No libc exists inside the guest: these helpers talk to the machine's
 * "guest contract" devices directly with port I/O (DESIGN.md):
 *   port 0xE9  debug console  (each byte written appears on the host)
 *   port 0xF4  debug exit     (writing v ends the run with status (v<<1)|1;
 *              the device decodes 0xF4-0xF7, as QEMU's isa-debug-exit, iosize=4)
 * Every helper is static inline, so a guest is one C file.
 */
#ifndef MINIKVM_GUEST_H
#define MINIKVM_GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
#if defined(__x86_64__)
typedef unsigned long uptr;
#else
typedef unsigned int uptr;
#endif

/* Where C guests leave results for the host to check (a page the VMM
 * leaves alone, below the page tables; see minikvm/x86/layout.py). */
#define RESULT_ADDR 0x60000

#define DEBUGCON_PORT 0xE9
#define DEBUG_EXIT_PORT 0xF4

static inline void outb(u16 port, u8 value) { __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port)); }
static inline void outw(u16 port, u16 value) { __asm__ volatile("outw %0, %1" : : "a"(value), "Nd"(port)); }
static inline void outl(u16 port, u32 value) { __asm__ volatile("outl %0, %1" : : "a"(value), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }

static inline void mmio_write32(uptr addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u32 mmio_read32(uptr addr) { return *(volatile u32 *)addr; }

static inline void putc_e9(char c) { outb(DEBUGCON_PORT, (u8)c); }

static inline void puts_e9(const char *s)
{
    while (*s)
        putc_e9(*s++);
}

/* Print v in decimal. unsigned long is the guest's word: 32 bits for -m32
 * guests (no 64-bit division, which would need libgcc), 64 for -m64. */
static inline void putdec_e9(unsigned long v)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n)
        putc_e9(digits[--n]);
}

/* Print v as 0x-prefixed hexadecimal with `digits` digits. */
static inline void puthex_e9(u64 v, int digits)
{
    putc_e9('0');
    putc_e9('x');
    for (int i = digits - 1; i >= 0; i--)
        putc_e9("0123456789abcdef"[(v >> (4 * i)) & 0xF]);
}

/* End the run with status (code << 1) | 1; never returns. */
static inline __attribute__((noreturn)) void guest_exit(u8 code)
{
    outb(DEBUG_EXIT_PORT, code);
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* Stop for good: interrupts off, then halt (the VMM reports status 0). */
static inline __attribute__((noreturn)) void halt(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

#endif
