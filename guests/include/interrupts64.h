/* interrupts64.h: just enough of the PC interrupt path for a long-mode guest.
 *
 *   device IRQ line -> 8259 PIC (remapped to vector PIC_VECTOR_BASE + irq)
 *   -> the local APIC's LINT0 (ExtINT on the boot CPU after reset)
 *   -> the CPU looks the vector up in the IDT -> our handler.
 *
 * The IDT holds 16-byte 64-bit interrupt gates (Intel SDM vol. 3, 6.14.1).
 * Handlers use GCC's interrupt attribute, which saves the registers it uses
 * and returns with iretq (needs -mgeneral-regs-only).
 */
#ifndef MINIKVM_INTERRUPTS64_H
#define MINIKVM_INTERRUPTS64_H
#include "guest.h"

#define PIC1_CMD 0x20
#define PIC1_DATA 0x21
#define PIC2_CMD 0xa0
#define PIC2_DATA 0xa1
#define PIC_EOI 0x20
/* Vectors 0-31 are CPU exceptions in protected/long mode, so the PICs
 * are moved above them, as every OS does. */
#define PIC_VECTOR_BASE 0x20

struct interrupt_frame;

struct idt_gate {
    u16 offset_low;
    u16 selector;
    u8 ist;
    u8 type_attr;     /* 0x8E: present, DPL 0, 64-bit interrupt gate */
    u16 offset_mid;
    u32 offset_high;
    u32 reserved;
} __attribute__((packed));

static struct idt_gate idt[256] __attribute__((aligned(16)));

static inline void idt_set_gate(int vector, void *handler)
{
    u64 addr = (u64)(uptr)handler;
    u16 cs;
    __asm__ volatile("mov %%cs, %0" : "=r"(cs));
    idt[vector].offset_low = addr & 0xffff;
    idt[vector].selector = cs;
    idt[vector].ist = 0;
    idt[vector].type_attr = 0x8e;
    idt[vector].offset_mid = (addr >> 16) & 0xffff;
    idt[vector].offset_high = addr >> 32;
    idt[vector].reserved = 0;
}

static inline void idt_load(void)
{
    struct { u16 limit; u64 base; } __attribute__((packed)) idtr = {
        sizeof(idt) - 1, (u64)(uptr)idt,
    };
    __asm__ volatile("lidt %0" : : "m"(idtr));
}

/* Initialise both PICs (edge triggered, cascaded on IRQ 2) with vectors from
 * PIC_VECTOR_BASE, and unmask only `irq` (and the cascade if irq >= 8). */
static inline void pic_init_unmask(int irq)
{
    outb(PIC1_CMD, 0x11);   /* ICW1: init, ICW4 follows */
    outb(PIC2_CMD, 0x11);
    outb(PIC1_DATA, PIC_VECTOR_BASE);       /* ICW2: vector base */
    outb(PIC2_DATA, PIC_VECTOR_BASE + 8);
    outb(PIC1_DATA, 0x04);  /* ICW3: slave on IRQ 2 */
    outb(PIC2_DATA, 0x02);
    outb(PIC1_DATA, 0x01);  /* ICW4: 8086 mode */
    outb(PIC2_DATA, 0x01);
    u16 mask = 0xffff & ~(1u << irq);
    if (irq >= 8)
        mask &= ~(1u << 2);
    outb(PIC1_DATA, mask & 0xff);
    outb(PIC2_DATA, mask >> 8);
}

static inline void pic_eoi(int irq)
{
    if (irq >= 8)
        outb(PIC2_CMD, PIC_EOI);
    outb(PIC1_CMD, PIC_EOI);
}

#endif
