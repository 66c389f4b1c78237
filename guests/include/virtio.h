/* virtio.h: a minimal virtio-mmio driver for bare-metal guests
 * (virtio 1.2: §2.7 split virtqueues, §3.1.1 driver initialisation,
 * §4.2.2 the MMIO register layout, §4.2.3 the MMIO driver's duties).
 *
 * One device, one queue, polling-free: requests complete with an interrupt.
 * The structures live in the guest's own memory; the device (the VMM) reads
 * and writes them directly -- that is the point of virtio.
 */
#ifndef MINIKVM_VIRTIO_H
#define MINIKVM_VIRTIO_H
#include "guest.h"
#include "interrupts64.h"

/* The machine places virtio-mmio devices from here, 4 KiB apart, on IRQ 5, 6 ... */
#define VIRTIO_MMIO_BASE 0xd0000000ul
#define VIRTIO_MMIO_FIRST_IRQ 5

/* Register offsets (Linux's <linux/virtio_mmio.h> names). */
#define VIRTIO_MMIO_MAGIC_VALUE        0x000
#define VIRTIO_MMIO_VERSION            0x004
#define VIRTIO_MMIO_DEVICE_ID          0x008
#define VIRTIO_MMIO_DEVICE_FEATURES    0x010
#define VIRTIO_MMIO_DEVICE_FEATURES_SEL 0x014
#define VIRTIO_MMIO_DRIVER_FEATURES    0x020
#define VIRTIO_MMIO_DRIVER_FEATURES_SEL 0x024
#define VIRTIO_MMIO_QUEUE_SEL          0x030
#define VIRTIO_MMIO_QUEUE_NUM_MAX      0x034
#define VIRTIO_MMIO_QUEUE_NUM          0x038
#define VIRTIO_MMIO_QUEUE_READY        0x044
#define VIRTIO_MMIO_QUEUE_NOTIFY       0x050
#define VIRTIO_MMIO_INTERRUPT_STATUS   0x060
#define VIRTIO_MMIO_INTERRUPT_ACK      0x064
#define VIRTIO_MMIO_STATUS             0x070
#define VIRTIO_MMIO_CONFIG_GENERATION  0x0fc
#define VIRTIO_MMIO_QUEUE_DESC_LOW     0x080
#define VIRTIO_MMIO_QUEUE_DESC_HIGH    0x084
#define VIRTIO_MMIO_QUEUE_AVAIL_LOW    0x090
#define VIRTIO_MMIO_QUEUE_AVAIL_HIGH   0x094
#define VIRTIO_MMIO_QUEUE_USED_LOW     0x0a0
#define VIRTIO_MMIO_QUEUE_USED_HIGH    0x0a4
#define VIRTIO_MMIO_CONFIG             0x100

#define VIRTIO_CONFIG_S_ACKNOWLEDGE 1
#define VIRTIO_CONFIG_S_DRIVER      2
#define VIRTIO_CONFIG_S_DRIVER_OK   4
#define VIRTIO_CONFIG_S_FEATURES_OK 8
#define VIRTIO_CONFIG_S_NEEDS_RESET 0x40
#define VIRTIO_CONFIG_S_FAILED      0x80

#define VIRTQ_DESC_F_NEXT  1   /* the chain continues in `next` */
#define VIRTQ_DESC_F_WRITE 2   /* the device writes this buffer */

#define QUEUE_SIZE 8

/* How the virtio guests end when something is wrong: the debug-exit value v
 * (`minikvm run` exits with (v << 1) | 1). They start at 2 because v = 0 and
 * v = 1 would read as statuses 1 ("KVM is not available") and 3 ("the guest
 * crashed") of `minikvm run`. */
#define VIRTIO_EXIT_NO_DEVICE 2   /* virtio_init failed: exit status 5 */
#define VIRTIO_EXIT_REFUSED   3   /* the device refused a request: exit status 7 */

struct virtq_desc { u64 addr; u32 len; u16 flags; u16 next; };
struct virtq_avail { u16 flags; u16 idx; u16 ring[QUEUE_SIZE]; u16 used_event; };
struct virtq_used_elem { u32 id; u32 len; };
struct virtq_used { u16 flags; u16 idx; struct virtq_used_elem ring[QUEUE_SIZE]; u16 avail_event; };

struct virtq {
    struct virtq_desc desc[QUEUE_SIZE] __attribute__((aligned(16)));
    struct virtq_avail avail __attribute__((aligned(2)));
    struct virtq_used used __attribute__((aligned(4)));
    u16 last_used;
};

static inline u32 vio_read(uptr base, u32 reg) { return mmio_read32(base + reg); }
static inline void vio_write(uptr base, u32 reg, u32 v) { mmio_write32(base + reg, v); }

/* §3.1.1: reset, ACKNOWLEDGE, DRIVER, features (VERSION_1 only), FEATURES_OK
 * (and check the device kept it), then queue 0 of QUEUE_SIZE entries, then
 * DRIVER_OK. Returns 0 on success, a small error number otherwise. */
static inline int virtio_init(uptr base, u32 want_device_id, struct virtq *vq)
{
    if (vio_read(base, VIRTIO_MMIO_MAGIC_VALUE) != 0x74726976)  /* "virt" */
        return 1;
    if (vio_read(base, VIRTIO_MMIO_VERSION) != 2)
        return 2;
    if (vio_read(base, VIRTIO_MMIO_DEVICE_ID) != want_device_id)
        return 3;
    vio_write(base, VIRTIO_MMIO_STATUS, 0);
    u32 status = VIRTIO_CONFIG_S_ACKNOWLEDGE;
    vio_write(base, VIRTIO_MMIO_STATUS, status);
    status |= VIRTIO_CONFIG_S_DRIVER;
    vio_write(base, VIRTIO_MMIO_STATUS, status);

    vio_write(base, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    if (!(vio_read(base, VIRTIO_MMIO_DEVICE_FEATURES) & 1))   /* VIRTIO_F_VERSION_1 = bit 32 */
        return 4;
    vio_write(base, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    vio_write(base, VIRTIO_MMIO_DRIVER_FEATURES, 0);
    vio_write(base, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    vio_write(base, VIRTIO_MMIO_DRIVER_FEATURES, 1);
    status |= VIRTIO_CONFIG_S_FEATURES_OK;
    vio_write(base, VIRTIO_MMIO_STATUS, status);
    if (!(vio_read(base, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK))
        return 5;

    vio_write(base, VIRTIO_MMIO_QUEUE_SEL, 0);
    if (vio_read(base, VIRTIO_MMIO_QUEUE_READY) != 0)
        return 6;
    if (vio_read(base, VIRTIO_MMIO_QUEUE_NUM_MAX) < QUEUE_SIZE)
        return 7;
    vio_write(base, VIRTIO_MMIO_QUEUE_NUM, QUEUE_SIZE);
    u64 desc = (u64)(uptr)vq->desc, avail = (u64)(uptr)&vq->avail, used = (u64)(uptr)&vq->used;
    vio_write(base, VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)desc);
    vio_write(base, VIRTIO_MMIO_QUEUE_DESC_HIGH, (u32)(desc >> 32));
    vio_write(base, VIRTIO_MMIO_QUEUE_AVAIL_LOW, (u32)avail);
    vio_write(base, VIRTIO_MMIO_QUEUE_AVAIL_HIGH, (u32)(avail >> 32));
    vio_write(base, VIRTIO_MMIO_QUEUE_USED_LOW, (u32)used);
    vio_write(base, VIRTIO_MMIO_QUEUE_USED_HIGH, (u32)(used >> 32));
    vio_write(base, VIRTIO_MMIO_QUEUE_READY, 1);

    status |= VIRTIO_CONFIG_S_DRIVER_OK;
    vio_write(base, VIRTIO_MMIO_STATUS, status);
    return 0;
}

/* What an error number of virtio_init means. */
static inline const char *virtio_init_error(int err)
{
    switch (err) {
    case 1: return "no \"virt\" magic value: no virtio-mmio device there";
    case 2: return "not a version 2 (virtio 1.x) virtio-mmio device";
    case 3: return "another kind of virtio device";
    case 4: return "the device does not offer VIRTIO_F_VERSION_1";
    case 5: return "the device refused FEATURES_OK";
    case 6: return "queue 0 is already in use";
    case 7: return "queue 0 is too small";
    default: return "unknown error";
    }
}

/* Say why virtio_init failed, then end the run with VIRTIO_EXIT_NO_DEVICE. */
static inline __attribute__((noreturn)) void virtio_init_failed(const char *who, int err)
{
    puts_e9(who);
    puts_e9(": init failed: ");
    puts_e9(virtio_init_error(err));
    puts_e9("\n");
    guest_exit(VIRTIO_EXIT_NO_DEVICE);
}

/* Offer the chain starting at descriptor `head` and kick the device. The
 * barrier keeps the compiler from moving the ring stores after the kick. */
static inline void virtq_submit(uptr base, struct virtq *vq, u16 head)
{
    vq->avail.ring[vq->avail.idx % QUEUE_SIZE] = head;
    __asm__ volatile("" ::: "memory");
    vq->avail.idx++;
    __asm__ volatile("" ::: "memory");
    vio_write(base, VIRTIO_MMIO_QUEUE_NOTIFY, 0);
}

/* Counted by virtio_irq_handler. */
static volatile u32 virtio_irqs;

/* The device's interrupt (§4.2.3.4): read why (InterruptStatus), ACK it,
 * which lowers the level-triggered line, count it, end it at the PIC. */
__attribute__((interrupt, unused)) static void virtio_irq_handler(struct interrupt_frame *frame)
{
    (void)frame;
    u32 why = mmio_read32(VIRTIO_MMIO_BASE + VIRTIO_MMIO_INTERRUPT_STATUS);
    mmio_write32(VIRTIO_MMIO_BASE + VIRTIO_MMIO_INTERRUPT_ACK, why);
    virtio_irqs++;
    pic_eoi(VIRTIO_MMIO_FIRST_IRQ);
}

/* Route the first virtio-mmio device's IRQ through the PIC to our handler. */
static inline void virtio_setup_interrupts(void)
{
    idt_set_gate(PIC_VECTOR_BASE + VIRTIO_MMIO_FIRST_IRQ, virtio_irq_handler);
    idt_load();
    pic_init_unmask(VIRTIO_MMIO_FIRST_IRQ);
}

/* Sleep until the device's interrupt reports a used chain. The driver only
 * looks at the used ring after an interrupt, so a completed request proves
 * the interrupt path. `cli; check; sti; hlt`: sti delays interrupts by one
 * instruction, so an interrupt arriving after the check still wakes the hlt
 * instead of being lost. */
static inline struct virtq_used_elem virtq_wait(struct virtq *vq)
{
    for (;;) {
        u32 seen = virtio_irqs;
        __asm__ volatile("sti; hlt; cli" ::: "memory");   /* wait for an interrupt */
        if (virtio_irqs != seen && *(volatile u16 *)&vq->used.idx != vq->last_used)
            break;
    }
    struct virtq_used_elem e = vq->used.ring[vq->last_used % QUEUE_SIZE];
    vq->last_used++;
    return e;
}

#endif
