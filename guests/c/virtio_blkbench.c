/* virtio_blkbench.c: sequential 64 KiB reads through virtio-blk, for
 * benchmarks/virtio_blk.py part (b), end to end from a real guest.
 *
 * The host leaves the number of requests at RESULT_ADDR before the start;
 * the guest reads that many 64 KiB blocks one after another (header, data,
 * status chain; each completes with an interrupt), adds up one byte of each
 * block as a check, and reports at RESULT_ADDR: marker, requests done,
 * interrupts taken, checksum, first failing status (0 = all ok).
 */
#include "guest.h"
#include "virtio.h"

#define BLOCK (64 * 1024)
#define VIRTIO_BLK_T_IN 0

struct blk_req_header { u32 type; u32 reserved; u64 sector; };

static struct virtq vq __attribute__((aligned(4096)));
static struct blk_req_header header;
static u8 data[BLOCK] __attribute__((aligned(4096)));
static volatile u8 status;

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    volatile u64 *result = (volatile u64 *)RESULT_ADDR;
    u64 requests = result[0];
    u64 checksum = 0, failed = 0, done = 0;

    virtio_setup_interrupts();
    int err = virtio_init(VIRTIO_MMIO_BASE, 2, &vq);
    if (err)
        virtio_init_failed("virtio-blkbench", err);

    vq.desc[0].addr = (u64)(uptr)&header;
    vq.desc[0].len = sizeof(header);
    vq.desc[0].flags = VIRTQ_DESC_F_NEXT;
    vq.desc[0].next = 1;
    vq.desc[1].addr = (u64)(uptr)data;
    vq.desc[1].len = BLOCK;
    vq.desc[1].flags = VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE;
    vq.desc[1].next = 2;
    vq.desc[2].addr = (u64)(uptr)&status;
    vq.desc[2].len = 1;
    vq.desc[2].flags = VIRTQ_DESC_F_WRITE;

    for (u64 i = 0; i < requests; i++) {
        header.type = VIRTIO_BLK_T_IN;
        header.sector = i * (BLOCK / 512);
        status = 0xff;
        virtq_submit(VIRTIO_MMIO_BASE, &vq, 0);
        virtq_wait(&vq);
        if (status != 0 && !failed)
            failed = status;
        checksum += data[0];
        done++;
    }
    result[0] = 0x48434e4542;   /* "BENCH" */
    result[1] = done;
    result[2] = virtio_irqs;
    result[3] = checksum;
    result[4] = failed;
    halt();
}
