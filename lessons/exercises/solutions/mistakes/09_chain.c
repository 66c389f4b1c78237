/* Exercise 09, a WRONG solution the tests use: a virtio-rng driver that offers its buffer
 * as ONE descriptor of 8 bytes. The task (09_chain.md): offer all 16 bytes
 * of `buffer` as one request made of TWO chained descriptors, 8 bytes each.
 * Check with:  minikvm lesson check 09
 *
 * The rest is guests/c/virtio_rng.c: it finds the virtio-mmio device at
 * 0xd0000000, initialises it (§3.1.1), posts the request on queue 0 (§5.4),
 * kicks, and sleeps in hlt until the device's interrupt (IRQ 5 through the
 * PIC) says the request is used. It prints the bytes it received.
 */
#include "guest.h"
#include "interrupts64.h"
#include "virtio.h"

#define IRQ VIRTIO_MMIO_FIRST_IRQ
#define NBYTES 16

static struct virtq vq __attribute__((aligned(4096)));
static u8 buffer[NBYTES];

__attribute__((interrupt)) static void virtio_irq(struct interrupt_frame *frame)
{
    (void)frame;
    u32 why = vio_read(VIRTIO_MMIO_BASE, VIRTIO_MMIO_INTERRUPT_STATUS);
    vio_write(VIRTIO_MMIO_BASE, VIRTIO_MMIO_INTERRUPT_ACK, why);  /* lowers the line */
    virtio_irqs++;
    pic_eoi(IRQ);
}

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    volatile u64 *result = (volatile u64 *)RESULT_ADDR;
    result[0] = 0x524e4721;  /* "!GNR" */

    idt_set_gate(PIC_VECTOR_BASE + IRQ, virtio_irq);
    idt_load();
    pic_init_unmask(IRQ);

    int err = virtio_init(VIRTIO_MMIO_BASE, 4 /* entropy source */, &vq);
    result[3] = err;
    if (err) {
        puts_e9("virtio-rng: init failed\n");
        guest_exit(err);
    }
    /* A plausible mistake (for the tests): chained, but descriptor 1 lost
     * its VIRTQ_DESC_F_WRITE: a device-readable buffer after a writable one. */
    vq.desc[0].addr = (u64)(uptr)buffer;
    vq.desc[0].len = NBYTES / 2;
    vq.desc[0].flags = VIRTQ_DESC_F_WRITE | VIRTQ_DESC_F_NEXT;
    vq.desc[0].next = 1;
    vq.desc[1].addr = (u64)(uptr)(buffer + NBYTES / 2);
    vq.desc[1].len = NBYTES / 2;
    vq.desc[1].flags = 0;
    virtq_submit(VIRTIO_MMIO_BASE, &vq, 0);
    struct virtq_used_elem used = virtq_wait(&vq);

    result[1] = used.len;
    result[2] = virtio_irqs;
    puts_e9("virtio-rng: ");
    for (u32 i = 0; i < used.len && i < NBYTES; i++)
        puthex_e9(buffer[i], 2), putc_e9(' ');
    puts_e9("\n");
    halt();
}
