/* sweep.c: a guest that touches what nobody decodes (long mode).
 *
 * Guests probe for hardware by touching addresses and looking at what comes
 * back; a hostile guest does it to make the VMM keep a note per address. This
 * one, in order:
 *   1. sweeps MMIO: a 32-bit read, then a 32-bit write of garbage, at
 *      `mmio_count` addresses from `mmio_base`, `mmio_stride` apart (by
 *      default above RAM, below the virtio windows: nothing is there);
 *   2. sweeps ports: an 8-bit read, then an 8-bit write of garbage, at
 *      `port_count` ports from `port_base` (by default 0x1000 up: above every
 *      port of the guest contract, so no write can end the run or reset it);
 *   3. floods the debug console with `flood_bytes` bytes of every value
 *      0x00..0xff in turn (byte i is i & 0xff).
 * A read of an address no device decodes floats to all ones (bus.py); the
 * guest counts the reads that did not. Then it prints one line and halts.
 *
 * The host may choose the amounts: if the u64 at PARAMS_ADDR holds
 * PARAMS_MAGIC, the next six u64 are mmio_count, mmio_base, mmio_stride,
 * port_count, port_base, flood_bytes. Otherwise the defaults below apply
 * (what `minikvm run guests/build/sweep.elf` does).
 * Results at RESULT_ADDR (u64): marker, MMIO addresses swept, ports swept,
 * bytes flooded, reads that did not float to all ones.
 */
#include "guest.h"

#define PARAMS_ADDR (RESULT_ADDR + 0x800)
#define PARAMS_MAGIC 0x5357454550ull   /* "PEEWS" */

#define DEFAULT_MMIO_COUNT 2048
#define DEFAULT_MMIO_BASE 0x40000000ul   /* 1 GiB: far above 2 MiB of RAM */
#define DEFAULT_MMIO_STRIDE 8
#define DEFAULT_PORT_COUNT 2048
#define DEFAULT_PORT_BASE 0x1000
#define DEFAULT_FLOOD_BYTES 0

static u64 rng_state = 0x9e3779b97f4a7c15ull;

/* xorshift64: garbage that is the same on every run. */
static u64 garbage(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

void __attribute__((section(".text.start"), noreturn)) _start(void)
{
    volatile u64 *result = (volatile u64 *)RESULT_ADDR;
    volatile u64 *params = (volatile u64 *)PARAMS_ADDR;
    u64 mmio_count = DEFAULT_MMIO_COUNT, mmio_base = DEFAULT_MMIO_BASE;
    u64 mmio_stride = DEFAULT_MMIO_STRIDE, port_count = DEFAULT_PORT_COUNT;
    u64 port_base = DEFAULT_PORT_BASE, flood_bytes = DEFAULT_FLOOD_BYTES;
    if (params[0] == PARAMS_MAGIC) {
        mmio_count = params[1];
        mmio_base = params[2];
        mmio_stride = params[3];
        port_count = params[4];
        port_base = params[5];
        flood_bytes = params[6];
    }
    result[0] = 0x5045455753ull;   /* "SWEEP" */
    u64 not_floating = 0;

    for (u64 i = 0; i < mmio_count; i++) {
        uptr addr = (uptr)(mmio_base + i * mmio_stride);
        if (mmio_read32(addr) != 0xffffffffu)
            not_floating++;
        mmio_write32(addr, (u32)garbage());
        result[1] = i + 1;
    }
    for (u64 i = 0; i < port_count; i++) {
        u16 port = (u16)(port_base + i);
        if (inb(port) != 0xff)
            not_floating++;
        outb(port, (u8)garbage());
        result[2] = i + 1;
    }
    for (u64 i = 0; i < flood_bytes; i++)
        outb(DEBUGCON_PORT, (u8)i);
    result[3] = flood_bytes;
    result[4] = not_floating;

    puts_e9("\nsweep: ");
    putdec_e9(mmio_count);
    puts_e9(" MMIO addresses, ");
    putdec_e9(port_count);
    puts_e9(" ports, ");
    putdec_e9(flood_bytes);
    puts_e9(" bytes flooded, ");
    putdec_e9(not_floating);
    puts_e9(" reads that did not float\n");
    halt();
}
