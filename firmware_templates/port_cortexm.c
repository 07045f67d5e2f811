/* vst firmware port for Arm Cortex-M in QEMU.
 *
 * Output and exit use Arm semihosting (SYS_WRITE0, SYS_EXIT through
 * `bkpt 0xab`), so no newlib stdio is linked. The counter is SysTick on the
 * processor clock (reload 0xFFFFFF, counting down), with an interrupt that
 * counts wraps. QEMU models no cycles: under `-icount shift=0` every
 * instruction advances virtual time by 1 ns, so one tick is 1e9 / clock
 * instructions (40 on the 25 MHz mps2 boards).
 */
#include <stdint.h>

#include "port.h"

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define SYST_ENABLE_CPUCLK 5u
#define SYST_TICKINT 2u
#define SYST_MAX 0xFFFFFFu

#define SYS_WRITE0 0x04
#define SYS_EXIT 0x18
#define ADP_STOPPED_APPLICATION_EXIT 0x20026u
#define ADP_STOPPED_RUNTIME_ERROR 0x20023u

#define VST_CALIB_LOOPS 500000u /* two instructions each */
#define VST_STACK_PAINT 0xC5AC5AC5u

extern uint32_t __stack_limit;

void SysTick_Handler(void);

static volatile uint32_t vst_wraps;
static uint32_t *vst_paint_top;

static uint32_t semihost(uint32_t op, const void *arg)
{
    register uint32_t r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void SysTick_Handler(void)
{
    vst_wraps = vst_wraps + 1u;
}

void vst_port_init(void)
{
    SYST_RVR = SYST_MAX;
    SYST_CVR = 0u;
    SYST_CSR = SYST_ENABLE_CPUCLK;
    while (SYST_CVR == 0u) {
        /* the first tick loads the reload value; it is not a wrap */
    }
    vst_wraps = 0u;
    SYST_CSR = SYST_ENABLE_CPUCLK | SYST_TICKINT;
}

void vst_port_write(const char *text)
{
    semihost(SYS_WRITE0, text);
}

void vst_port_exit(int status)
{
    uintptr_t reason = status == 0 ? ADP_STOPPED_APPLICATION_EXIT : ADP_STOPPED_RUNTIME_ERROR;
    for (;;) {
        semihost(SYS_EXIT, (const void *)reason);
    }
}

uint64_t vst_port_ticks(void)
{
    uint32_t wraps, value;
    do {
        wraps = vst_wraps;
        value = SYST_CVR;
    } while (wraps != vst_wraps);
    return ((uint64_t)wraps << 24) + (SYST_MAX - value);
}

uint64_t vst_port_calibrate(uint32_t *instructions)
{
    uint32_t n = VST_CALIB_LOOPS;
    uint64_t start = vst_port_ticks();
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
    uint64_t end = vst_port_ticks();
    *instructions = 2u * VST_CALIB_LOOPS;
    return end - start;
}

static uint32_t *stack_pointer(void)
{
    uint32_t *sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

void vst_port_stack_paint(void)
{
    volatile uint32_t *word = &__stack_limit;
    vst_paint_top = stack_pointer();
    while (word < vst_paint_top) {
        *word++ = VST_STACK_PAINT;
    }
}

uint32_t vst_port_stack_used(void)
{
    const volatile uint32_t *word = &__stack_limit;
    while (word < vst_paint_top && *word == VST_STACK_PAINT) {
        ++word;
    }
    return (uint32_t)((uintptr_t)vst_paint_top - (uintptr_t)word);
}
