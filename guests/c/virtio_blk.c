/* virtio_blk.c: a bare-metal virtio-blk driver (long mode).
 *
 * Every request is a chain of three descriptors (§5.2.6): a header the
 * device reads (type, sector), the data buffer (written by the device for a
 * read, read by it for a write), and one status byte the device writes.
 *   1. read sector 0 and print its first line (the host put text there);
 *   2. write sector 1 with a pattern the test checks in the host file;
 *   3. flush.
 * Each request completes with an interrupt (IRQ 5). The driver checks the
 * status byte of every request: VIRTIO_BLK_S_OK, or it says what the device
 * answered (IOERR, UNSUPP, or no valid status at all) and why that may be,
 * and ends the run with VIRTIO_EXIT_REFUSED (exit status 7); no device at all
 * ends it with VIRTIO_EXIT_NO_DEVICE (exit status 5).
 * Results at RESULT_ADDR (u64): marker, capacity in sectors, status of
 * read/write/flush (0xff: not done), interrupts.
 */
#include "guest.h"
#include "virtio.h"

#define SECTOR 512
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4

/* The status byte (§5.2.6). */
#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define VIRTIO_BLK_F_RO 5   /* the device offers a read-only disk */

struct blk_req_header { u32 type; u32 reserved; u64 sector; };

static struct virtq vq __attribute__((aligned(4096)));
static struct blk_req_header header;
static u8 data[SECTOR];
static volatile u8 status;
static u64 capacity;
static int read_only;

static u8 blk_request(u32 type, u64 sector, int with_data, int device_writes_data)
{
    header.type = type;
    header.reserved = 0;
    header.sector = sector;
    status = 0xff;   /* not a valid status: shows whether the device wrote one */
    vq.desc[0].addr = (u64)(uptr)&header;
    vq.desc[0].len = sizeof(header);
    vq.desc[0].flags = VIRTQ_DESC_F_NEXT;
    vq.desc[0].next = 1;
    u16 last = 1;
    if (with_data) {
        vq.desc[1].addr = (u64)(uptr)data;
        vq.desc[1].len = SECTOR;
        vq.desc[1].flags = VIRTQ_DESC_F_NEXT | (device_writes_data ? VIRTQ_DESC_F_WRITE : 0);
        vq.desc[1].next = 2;
        last = 2;
    } else {
        vq.desc[0].next = 2;
        last = 2;
    }
    vq.desc[last].addr = (u64)(uptr)&status;
    vq.desc[last].len = 1;
    vq.desc[last].flags = VIRTQ_DESC_F_WRITE;
    virtq_submit(VIRTIO_MMIO_BASE, &vq, 0);
    virtq_wait(&vq);
    return status;
}

/* The capacity (§5.2.4), read as §2.5.1 asks: a 64-bit field is two 32-bit
 * reads, so read it again if ConfigGeneration changed in between (the
 * device changes it when the image changes size under us). */
static u64 read_capacity(void)
{
    u32 before, after;
    u64 value;
    do {
        before = vio_read(VIRTIO_MMIO_BASE, VIRTIO_MMIO_CONFIG_GENERATION);
        value = vio_read(VIRTIO_MMIO_BASE, VIRTIO_MMIO_CONFIG)
              | (u64)vio_read(VIRTIO_MMIO_BASE, VIRTIO_MMIO_CONFIG + 4) << 32;
        after = vio_read(VIRTIO_MMIO_BASE, VIRTIO_MMIO_CONFIG_GENERATION);
    } while (before != after);
    return value;
}

/* Anything but VIRTIO_BLK_S_OK: say what the device answered to `what`
 * (reading/writing `sector`, or flushing), what that likely means, and end
 * the run with VIRTIO_EXIT_REFUSED. */
static void check(u8 answer, const char *what, int has_sector, u64 sector)
{
    if (answer == VIRTIO_BLK_S_OK)
        return;
    puts_e9("virtio-blk: ");
    puts_e9(what);
    if (has_sector) {
        puts_e9(" sector ");
        putdec_e9(sector);
    }
    puts_e9(" failed: ");
    if (answer == VIRTIO_BLK_S_IOERR) {
        puts_e9("the device answered IOERR");
        u64 now = read_capacity();   /* the image may have shrunk meanwhile */
        if (has_sector && sector >= now) {
            if (now < capacity) {
                puts_e9(" (the disk shrank from ");
                putdec_e9(capacity);
                puts_e9(" to ");
            } else {
                puts_e9(" (the disk has ");
            }
            putdec_e9(now);
            puts_e9(now == 1 ? " sector" : " sectors");
            puts_e9(now < capacity ? " while we ran" : "");
            puts_e9(": the sector is past its end)");
        } else if (read_only && header.type == VIRTIO_BLK_T_OUT) {
            puts_e9(" (the disk is read-only: VIRTIO_BLK_F_RO)");
        }
    } else if (answer == VIRTIO_BLK_S_UNSUPP) {
        puts_e9("the device answered UNSUPP (it does not do this request)");
    } else {
        puts_e9("no valid status byte (");
        puthex_e9(answer, 2);
        puts_e9(")");
    }
    puts_e9("\n");
    guest_exit(VIRTIO_EXIT_REFUSED);
}

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    volatile u64 *result = (volatile u64 *)RESULT_ADDR;
    result[0] = 0x4b4c4221;  /* "!BLK" */
    result[2] = result[3] = result[4] = 0xff;

    virtio_setup_interrupts();
    int err = virtio_init(VIRTIO_MMIO_BASE, 2 /* block device */, &vq);
    if (err)
        virtio_init_failed("virtio-blk", err);
    capacity = read_capacity();
    result[1] = capacity;
    vio_write(VIRTIO_MMIO_BASE, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0);
    read_only = (vio_read(VIRTIO_MMIO_BASE, VIRTIO_MMIO_DEVICE_FEATURES) >> VIRTIO_BLK_F_RO) & 1;

    result[2] = blk_request(VIRTIO_BLK_T_IN, 0, 1, 1);
    result[5] = virtio_irqs;
    check(result[2], "reading", 1, 0);
    puts_e9("virtio-blk: sector 0 says: ");
    for (int i = 0; i < 64 && data[i] && data[i] != '\n'; i++)
        putc_e9(data[i]);
    puts_e9("\n");

    const char *msg = "written by the minikvm virtio-blk guest";
    for (int i = 0; i < SECTOR; i++)
        data[i] = 0;
    for (int i = 0; msg[i]; i++)
        data[i] = msg[i];
    result[3] = blk_request(VIRTIO_BLK_T_OUT, 1, 1, 0);
    result[5] = virtio_irqs;
    check(result[3], "writing", 1, 1);
    result[4] = blk_request(VIRTIO_BLK_T_FLUSH, 0, 0, 0);
    result[5] = virtio_irqs;
    check(result[4], "flushing", 0, 0);
    puts_e9("virtio-blk: wrote sector 1, flushed\n");
    halt();
}
