/* virtio_rng.c: a bare-metal virtio-rng driver (long mode).
 *
 * Finds the virtio-mmio device at 0xd0000000, initialises it (§3.1.1),
 * posts one device-writable buffer of 16 bytes on the request queue (§5.4),
 * kicks, and sleeps in hlt until the device's interrupt (IRQ 5 through the
 * PIC) says the buffer is used. It prints the random bytes it received.
 * Results at RESULT_ADDR (u64): marker, bytes received, interrupts taken,
 * init error (0 = ok).
 */
#include "guest.h"
#include "virtio.h"

#define NBYTES 16

static struct virtq vq __attribute__((aligned(4096)));
static u8 buffer[NBYTES];

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    volatile u64 *result = (volatile u64 *)RESULT_ADDR;
    result[0] = 0x524e4721;  /* "!GNR" */

    virtio_setup_interrupts();

    int err = virtio_init(VIRTIO_MMIO_BASE, 4 /* entropy source */, &vq);
    result[3] = err;
    if (err)
        virtio_init_failed("virtio-rng", err);
    vq.desc[0].addr = (u64)(uptr)buffer;
    vq.desc[0].len = NBYTES;
    vq.desc[0].flags = VIRTQ_DESC_F_WRITE;
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
