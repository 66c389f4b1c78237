/* virtio_hostile.c: a driver that writes garbage to every virtio register (long mode).
 *
 * The device models are tested against hostile input with mock memory
 * (tests/test_virtio_hostile.py); this guest does the same from a real vCPU,
 * through real MMIO exits, against the first virtio-mmio device (any kind).
 * Each round:
 *   1. reset, then garbage to every register and the first 256 bytes of the
 *      configuration space (32-bit writes, then 8- and 16-bit ones), and a
 *      read of each -- all before DRIVER_OK (a garbage Status write has its
 *      DRIVER_OK bit cleared in this phase);
 *   2. a proper initialisation (virtio.h: reset, features, queue 0, DRIVER_OK),
 *      then kicks: with a descriptor table and available ring full of
 *      garbage, or with a request-shaped chain full of garbage (for
 *      virtio-blk: any type, any sector, any length, so some are valid
 *      writes to the disk); a device in NEEDS_RESET is set up again;
 *   3. garbage to every register again, DRIVER_OK and all.
 * Before the first round and after the last one it makes one proper request
 * (for virtio-blk: read sector 0) to show the device works, and works again
 * after the driver resets it.
 *
 * Garbage addresses point into a scratch area of this guest, past the end of
 * RAM, or near 2^64 -- never at the guest's own code, stack or page tables, so
 * the guest survives to report (a device that wrote elsewhere would show as a
 * crashed guest). The scratch area itself holds garbage descriptors (for
 * indirect tables) and virtio-blk request headers of every type.
 * Interrupts stay off throughout: the device may raise its line, nobody takes it.
 *
 * If the u64 at PARAMS_ADDR holds PARAMS_MAGIC the next one is the number of
 * rounds (default DEFAULT_ROUNDS).
 * Results at RESULT_ADDR (u64): marker, status of the first proper request,
 * status of the last one, the first 8 bytes the last one read, rounds done,
 * garbage register writes, kicks.
 */
#include "guest.h"
#include "virtio.h"

#define PARAMS_ADDR (RESULT_ADDR + 0x800)
#define PARAMS_MAGIC 0x4c4954534f48ull   /* "HOSTIL" */
#define DEFAULT_ROUNDS 16
#define KICKS_PER_ROUND 8

#define REGISTERS_END 0x100
#define CONFIG_POKED 0x100
#define SCRATCH_SIZE 0x10000
#define RAM_END 0x200000ull          /* 2 MiB, the default */

#define VIRTIO_BLK_T_IN 0
#define BLK_STATUS_NONE 0xff

struct blk_req_header { u32 type; u32 reserved; u64 sector; };

static struct virtq vq __attribute__((aligned(4096)));
static u8 scratch[SCRATCH_SIZE] __attribute__((aligned(4096)));
static struct blk_req_header header;
static u8 data[512];
static volatile u8 status;
static u64 register_writes, kicks;

static u64 rng_state = 0x2545f4914f6cdd1dull;

/* xorshift64: the same garbage on every run, so a failure can be replayed. */
static u64 garbage(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* An address a hostile descriptor may carry, never one of ours but scratch. */
static u64 hostile_address(void)
{
    u64 g = garbage();
    switch (g & 3) {
    case 0: return (u64)(uptr)scratch + (g >> 8) % SCRATCH_SIZE;         /* ours to spoil */
    case 1: return RAM_END + ((g >> 8) & 0xffffffffffull);               /* past RAM */
    case 2: return 0xfffffffffffff000ull | ((g >> 8) & 0xfff);           /* wraps 2^64 */
    default: return g | 0x8000000000000000ull;                           /* far away */
    }
}

static void hostile_descriptor(struct virtq_desc *d)
{
    u64 g = garbage();
    d->addr = hostile_address();
    d->len = (g & 1) ? (u32)(g >> 32) : (u32)((g >> 8) & 0x3ff);
    d->flags = (u16)((g >> 16) & 7);          /* NEXT, WRITE, INDIRECT in any mix */
    d->next = (u16)((g >> 20) & 0xf);         /* half of them past QUEUE_SIZE */
}

/* Scratch: garbage descriptors everywhere (what an indirect table into it
 * reads), then request headers of every type in its first 4 KiB. */
static void fill_scratch(void)
{
    struct virtq_desc *d = (struct virtq_desc *)scratch;
    for (u64 i = 0; i < SCRATCH_SIZE / sizeof(*d); i++)
        hostile_descriptor(&d[i]);
    static const u32 types[] = {0, 1, 4, 8, 11, 13, 0xffffffffu};
    struct blk_req_header *h = (struct blk_req_header *)scratch;
    for (u64 i = 0; i < 4096 / sizeof(*h); i++) {
        u64 g = garbage();
        h[i].type = types[g % 7];
        h[i].reserved = 0;
        h[i].sector = (g >> 8) & 1 ? (g >> 16) % 64 : g;
    }
}

/* Garbage to every register and to the configuration space, then read them. */
static void garbage_registers(uptr base, int keep_driver_ok_off)
{
    for (u32 reg = 0; reg < REGISTERS_END + CONFIG_POKED; reg += 4) {
        u32 value = (u32)garbage();
        if (reg == VIRTIO_MMIO_STATUS && keep_driver_ok_off)
            value &= ~(u32)VIRTIO_CONFIG_S_DRIVER_OK;
        if (reg == VIRTIO_MMIO_QUEUE_NOTIFY)
            kicks++;
        vio_write(base, reg, value);
        register_writes++;
    }
    for (u32 reg = 0; reg < REGISTERS_END + CONFIG_POKED; reg += 3) {
        u64 g = garbage();
        if (reg == VIRTIO_MMIO_STATUS && keep_driver_ok_off)
            g &= ~(u64)VIRTIO_CONFIG_S_DRIVER_OK;
        if (g & 1)
            *(volatile u8 *)(base + reg) = (u8)g;
        else
            *(volatile u16 *)(base + (reg & ~1u)) = (u16)g;
        register_writes++;
    }
    for (u32 reg = 0; reg < REGISTERS_END + CONFIG_POKED; reg += 4)
        (void)vio_read(base, reg);
}

/* Zero the queue memory and initialise the device properly (virtio.h). */
static int reinit(uptr base)
{
    vio_write(base, VIRTIO_MMIO_STATUS, 0);
    for (u64 i = 0; i < sizeof(vq); i++)
        ((volatile u8 *)&vq)[i] = 0;
    return virtio_init(base, vio_read(base, VIRTIO_MMIO_DEVICE_ID), &vq);
}

/* A chain that looks like a request: a header from scratch (any type, any
 * sector), a data buffer in scratch of a garbage length (the device may read
 * or write it), a status byte in scratch. */
static u16 plausible_chain(u64 g)
{
    u16 head = (u16)(g & 7), data_at = (u16)((head + 1) & 7), status_at = (u16)((head + 2) & 7);
    vq.desc[head] = (struct virtq_desc){
        (u64)(uptr)scratch + 16 * ((g >> 3) % 256), 16, VIRTQ_DESC_F_NEXT, data_at};
    u32 len = (g >> 11) & 1 ? 512u * (u32)(1 + (g >> 12) % 8) : (u32)((g >> 12) % 0x1400);
    vq.desc[data_at] = (struct virtq_desc){
        (u64)(uptr)scratch + 0x1000 + (g >> 24) % 0x4000, len,
        (u16)(VIRTQ_DESC_F_NEXT | ((g >> 40) & 1 ? VIRTQ_DESC_F_WRITE : 0)), status_at};
    vq.desc[status_at] = (struct virtq_desc){
        (u64)(uptr)scratch + 0x8000 + (g >> 44) % 0x100, (u32)(1 + (g >> 52) % 2),
        VIRTQ_DESC_F_WRITE, 0};
    return head;
}

/* Kicks on a live device with garbage in the descriptor table and the
 * available ring -- or, every other time, a plausible request with garbage
 * in it. A device that answered with NEEDS_RESET is reset and set up again. */
static void garbage_queue(uptr base)
{
    for (int kick = 0; kick < KICKS_PER_ROUND; kick++) {
        if (vio_read(base, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET)
            if (reinit(base))
                return;
        u64 g = garbage();
        for (int i = 0; i < QUEUE_SIZE; i++)
            hostile_descriptor(&vq.desc[i]);
        if (g & 0x10000) {
            vq.avail.ring[vq.avail.idx % QUEUE_SIZE] = plausible_chain(garbage());
            vq.avail.idx++;
        } else {
            for (int i = 0; i < QUEUE_SIZE; i++)
                vq.avail.ring[i] = (u16)((g >> (4 * i)) & 0xf);
            vq.avail.flags = (u16)(g >> 40);
            vq.used.avail_event = (u16)(g >> 48);
            vq.avail.idx = (g & 0x10) ? (u16)(g >> 24) : (u16)(vq.avail.idx + (g & 3));
        }
        __asm__ volatile("" ::: "memory");
        vio_write(base, VIRTIO_MMIO_QUEUE_NOTIFY, (g & 0x700) == 0x700 ? (u32)(g >> 32) : 0);
        kicks++;
        vio_write(base, VIRTIO_MMIO_INTERRUPT_ACK, vio_read(base, VIRTIO_MMIO_INTERRUPT_STATUS));
    }
}

/* One proper virtio-blk read of sector 0 on a freshly initialised device,
 * polled (the device completes it during the kick). Returns its status
 * byte, or BLK_STATUS_NONE when it did not complete. */
static u8 proper_request(uptr base)
{
    if (vio_read(base, VIRTIO_MMIO_DEVICE_ID) != 2 /* block device */ || reinit(base))
        return BLK_STATUS_NONE;
    header.type = VIRTIO_BLK_T_IN;
    header.reserved = 0;
    header.sector = 0;
    status = BLK_STATUS_NONE;
    vq.desc[0] = (struct virtq_desc){(u64)(uptr)&header, sizeof(header), VIRTQ_DESC_F_NEXT, 1};
    vq.desc[1] = (struct virtq_desc){(u64)(uptr)data, sizeof(data),
                                     VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2};
    vq.desc[2] = (struct virtq_desc){(u64)(uptr)&status, 1, VIRTQ_DESC_F_WRITE, 0};
    virtq_submit(base, &vq, 0);
    if (*(volatile u16 *)&vq.used.idx != 1)
        return BLK_STATUS_NONE;
    return status;
}

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    volatile u64 *result = (volatile u64 *)RESULT_ADDR;
    volatile u64 *params = (volatile u64 *)PARAMS_ADDR;
    uptr base = VIRTIO_MMIO_BASE;
    u64 rounds = params[0] == PARAMS_MAGIC ? params[1] : DEFAULT_ROUNDS;
    result[0] = 0x4c4954534f48ull;   /* "HOSTIL" */
    result[1] = result[2] = BLK_STATUS_NONE;

    result[1] = proper_request(base);
    fill_scratch();
    for (u64 round = 0; round < rounds; round++) {
        vio_write(base, VIRTIO_MMIO_STATUS, 0);
        garbage_registers(base, 1);                      /* before DRIVER_OK */
        if (reinit(base) == 0)
            garbage_queue(base);                         /* a live device, garbage rings */
        garbage_registers(base, 0);                      /* after DRIVER_OK */
        result[4] = round + 1;
        result[5] = register_writes;
        result[6] = kicks;
    }
    result[2] = proper_request(base);
    result[3] = *(volatile u64 *)data;

    puts_e9("virtio-hostile: ");
    puthex_e9(rounds, 4);
    puts_e9(" rounds, first request status ");
    puthex_e9(result[1], 2);
    puts_e9(", last ");
    puthex_e9(result[2], 2);
    puts_e9("\n");
    halt();
}
