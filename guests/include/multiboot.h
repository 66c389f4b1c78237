/* multiboot.h: what a Multiboot v1 kernel and its boot loader agree on.
 *
 * From the Multiboot Specification, version 0.6.96:
 *   3.1  the header the kernel carries in its first 8192 bytes;
 *   3.2  the machine state at entry (EAX = MULTIBOOT_BOOTLOADER_MAGIC,
 *        EBX = the boot information, flat 32-bit protected mode, no paging);
 *   3.3  the boot information structure and its flags.
 * Only the fields our guests read are named; the offsets are the spec's.
 */
#ifndef MINIKVM_MULTIBOOT_H
#define MINIKVM_MULTIBOOT_H

#include "guest.h"

#define MULTIBOOT_HEADER_MAGIC     0x1BADB002u
#define MULTIBOOT_BOOTLOADER_MAGIC 0x2BADB002u
#define MULTIBOOT_PAGE_ALIGN   (1u << 0)   /* modules on 4 KiB boundaries, please */
#define MULTIBOOT_MEMORY_INFO  (1u << 1)   /* mem_lower/mem_upper, please */

/* The header: magic + flags + checksum must add up to 0 (3.1.2). The
 * linker script puts the section first, well inside the first 8 KiB. */
#define MULTIBOOT_HEADER(flags)                                              \
    __attribute__((section(".multiboot"), used, aligned(4)))                 \
    static const u32 multiboot_header[3] = {                                 \
        MULTIBOOT_HEADER_MAGIC, (flags), -(MULTIBOOT_HEADER_MAGIC + (flags)) }

/* The entry point: the loader leaves EAX and EBX for us and no stack we
 * may rely on (3.2), so a few instructions set ESP and call C with both. */
#define MULTIBOOT_ENTRY(c_main, stack_top)                                   \
    __asm__(".section .text.start\n"                                         \
            ".globl _start\n"                                                \
            "_start:\n"                                                      \
            "    mov $" #stack_top ", %esp\n"                                \
            "    push %ebx\n"                                                \
            "    push %eax\n"                                                \
            "    call " #c_main "\n"                                         \
            "1:  cli\n"                                                      \
            "    hlt\n"                                                      \
            "    jmp 1b\n"                                                   \
            ".previous\n")

/* Boot information flags (3.3): which fields below are valid. */
#define MBI_MEMORY           (1u << 0)
#define MBI_CMDLINE          (1u << 2)
#define MBI_MODS             (1u << 3)
#define MBI_MMAP             (1u << 6)
#define MBI_BOOT_LOADER_NAME (1u << 9)

struct multiboot_info {
    u32 flags;
    u32 mem_lower;          /* KiB from 0 */
    u32 mem_upper;          /* KiB from 1 MiB up to the first hole */
    u32 boot_device;
    u32 cmdline;            /* physical address of a NUL-terminated string */
    u32 mods_count;
    u32 mods_addr;          /* physical address of mods_count multiboot_module */
    u32 syms[4];
    u32 mmap_length;        /* bytes of memory map */
    u32 mmap_addr;          /* physical address of the first multiboot_mmap */
    u32 drives_length;
    u32 drives_addr;
    u32 config_table;
    u32 boot_loader_name;   /* physical address of a NUL-terminated string */
    u32 apm_table;
    u32 vbe[4];
};

struct multiboot_module {
    u32 start, end;         /* [start, end) in physical memory */
    u32 string;             /* its command line (QEMU: the file name) */
    u32 reserved;
};

/* One memory map entry. `size` counts the bytes after itself, so the next
 * entry is at (char *)entry + entry->size + 4 (3.3). */
struct multiboot_mmap {
    u32 size;
    u64 base;
    u64 length;
    u32 type;               /* 1: usable RAM; anything else: reserved */
} __attribute__((packed));

#endif
