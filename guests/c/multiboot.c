/* multiboot.c: a 32-bit Multiboot kernel that says what its loader told it.
 *
 * Built as an ordinary ELF32 at 1 MiB with a Multiboot header in front
 * (include/multiboot.h), so `minikvm run` -- or `qemu-system-x86_64
 * -kernel` -- loads it as GRUB would. It checks the loader's magic in EAX,
 * then prints, from the boot information EBX points at:
 *   the boot loader's name and the command line;
 *   mem_lower / mem_upper and every memory map entry;
 *   every module: where it lies, its string, and its first bytes.
 * Results at RESULT_ADDR (u32 words): marker "MBOK", the info flags,
 * mem_lower, mem_upper, the number of map entries, usable KiB in the map,
 * the number of modules, then per module its start, end and first word.
 * A wrong magic ends the run with status (0x10 << 1) | 1 = 33.
 */
#include "multiboot.h"

MULTIBOOT_HEADER(MULTIBOOT_PAGE_ALIGN | MULTIBOOT_MEMORY_INFO);
MULTIBOOT_ENTRY(kernel_main, 0x6f000);

/* At most `limit` bytes of a guest string, unprintable ones as '.'. */
static void put_string(const char *s, int limit)
{
    for (int i = 0; i < limit && s[i]; i++)
        putc_e9(s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '.');
}

void __attribute__((used)) kernel_main(u32 magic, const struct multiboot_info *info)
{
    volatile u32 *result = (volatile u32 *)RESULT_ADDR;

    if (magic != MULTIBOOT_BOOTLOADER_MAGIC) {
        puts_e9("multiboot: wrong magic in EAX: ");
        puthex_e9(magic, 8);
        puts_e9("\n");
        guest_exit(0x10);
    }
    puts_e9("multiboot: loaded by ");
    if (info->flags & MBI_BOOT_LOADER_NAME)
        put_string((const char *)(uptr)info->boot_loader_name, 64);
    puts_e9("\ncmdline: ");
    if (info->flags & MBI_CMDLINE)
        put_string((const char *)(uptr)info->cmdline, 200);
    puts_e9("\n");

    u32 entries = 0, usable_kib = 0;
    if (info->flags & MBI_MEMORY) {
        puts_e9("memory: lower ");
        putdec_e9(info->mem_lower);
        puts_e9(" KiB, upper ");
        putdec_e9(info->mem_upper);
        puts_e9(" KiB\n");
    }
    if (info->flags & MBI_MMAP) {
        uptr at = info->mmap_addr, end = info->mmap_addr + info->mmap_length;
        while (at < end && entries < 64) {
            const struct multiboot_mmap *e = (const struct multiboot_mmap *)at;
            puts_e9("  map ");
            puthex_e9(e->base, 9);
            puts_e9("-");
            puthex_e9(e->base + e->length - 1, 9);
            puts_e9(e->type == 1 ? " usable\n" : " reserved\n");
            if (e->type == 1)
                usable_kib += (u32)(e->length >> 10);
            entries++;
            at += e->size + 4;
        }
    }

    u32 mods = (info->flags & MBI_MODS) ? info->mods_count : 0;
    result[0] = 0x4b4f424d;            /* "MBOK" */
    result[1] = info->flags;
    result[2] = info->mem_lower;
    result[3] = info->mem_upper;
    result[4] = entries;
    result[5] = usable_kib;
    result[6] = mods;
    puts_e9("modules: ");
    putdec_e9(mods);
    puts_e9("\n");
    const struct multiboot_module *m = (const struct multiboot_module *)(uptr)info->mods_addr;
    for (u32 i = 0; i < mods && i < 16; i++) {
        puts_e9("  module ");
        putdec_e9(i);
        puts_e9(" at ");
        puthex_e9(m[i].start, 8);
        puts_e9("-");
        puthex_e9(m[i].end, 8);
        puts_e9(" \"");
        put_string((const char *)(uptr)m[i].string, 100);
        puts_e9("\": ");
        u32 length = m[i].end - m[i].start;
        put_string((const char *)(uptr)m[i].start, length < 32 ? (int)length : 32);
        puts_e9("\n");
        result[7 + 3 * i] = m[i].start;
        result[8 + 3 * i] = m[i].end;
        result[9 + 3 * i] = length >= 4 ? *(const u32 *)(uptr)m[i].start : 0;
    }
    puts_e9("multiboot: done\n");
    halt();
}
