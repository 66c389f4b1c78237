/* Exercise 10, starting point: a virtio-blk driver that reads sector 0.
 *
 * The task (10_get_id.md): also ask the disk for its serial number -- a
 * VIRTIO_BLK_T_GET_ID request (§5.2.6) with a 20-byte buffer the device
 * writes -- and print it as "serial: <the serial>".
 * Check with:  minikvm lesson check 10
 *
 * Like guests/c/virtio_blk.c (long mode, one queue, each request completes
 * with an interrupt on IRQ 5), trimmed to one helper for all requests.
 */
#include "guest.h"
#include "interrupts64.h"
#include "virtio.h"

#define IRQ VIRTIO_MMIO_FIRST_IRQ
#define SECTOR 512
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_ID_BYTES 20

struct blk_req_header { u32 type; u32 reserved; u64 sector; };

static struct virtq vq __attribute__((aligned(4096)));
static struct blk_req_header header;
static u8 sector[SECTOR];
static u8 serial[VIRTIO_BLK_ID_BYTES + 1];   /* +1: room for a terminating zero */
static volatile u8 status;

__attribute__((interrupt)) static void virtio_irq(struct interrupt_frame *frame)
{
    (void)frame;
    u32 why = vio_read(VIRTIO_MMIO_BASE, VIRTIO_MMIO_INTERRUPT_STATUS);
    vio_write(VIRTIO_MMIO_BASE, VIRTIO_MMIO_INTERRUPT_ACK, why);
    virtio_irqs++;
    pic_eoi(IRQ);
}

/* One request: header (device-readable), `len` bytes at `data` (written by
 * the device when `device_writes` is 1, read by it otherwise), status byte.
 * Waits for the interrupt; returns the status the device wrote. */
static u8 blk_request(u32 type, u64 at_sector, void *data, u32 len, int device_writes)
{
    header.type = type;
    header.reserved = 0;
    header.sector = at_sector;
    status = 0xff;
    vq.desc[0].addr = (u64)(uptr)&header;
    vq.desc[0].len = sizeof(header);
    vq.desc[0].flags = VIRTQ_DESC_F_NEXT;
    vq.desc[0].next = 1;
    vq.desc[1].addr = (u64)(uptr)data;
    vq.desc[1].len = len;
    vq.desc[1].flags = VIRTQ_DESC_F_NEXT | (device_writes ? VIRTQ_DESC_F_WRITE : 0);
    vq.desc[1].next = 2;
    vq.desc[2].addr = (u64)(uptr)&status;
    vq.desc[2].len = 1;
    vq.desc[2].flags = VIRTQ_DESC_F_WRITE;
    virtq_submit(VIRTIO_MMIO_BASE, &vq, 0);
    virtq_wait(&vq);
    return status;
}

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    idt_set_gate(PIC_VECTOR_BASE + IRQ, virtio_irq);
    idt_load();
    pic_init_unmask(IRQ);
    int err = virtio_init(VIRTIO_MMIO_BASE, 2 /* block device */, &vq);
    if (err) {
        puts_e9("virtio-blk: init failed\n");
        guest_exit(err);
    }

    u8 st = blk_request(VIRTIO_BLK_T_IN, 0, sector, SECTOR, 1);
    puts_e9("sector 0: ");
    for (int i = 0; i < 64 && st == 0 && sector[i] && sector[i] != '\n'; i++)
        putc_e9(sector[i]);
    puts_e9("\n");

    /* TODO: a VIRTIO_BLK_T_GET_ID request into `serial`, then print
     * "serial: " and the serial (it ends at the first zero byte, or after
     * 20 bytes), and a newline. */

    halt();
}
