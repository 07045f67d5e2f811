/* vst firmware startup for Arm Cortex-M (Armv7-M and Armv8-M Mainline).
 *
 * The vector table, a reset handler that copies .data from flash, zeroes
 * .bss, enables the FPU when the build uses one, and calls main(); any fault
 * prints a line and exits through semihosting, so QEMU never hangs.
 */
#include <stdint.h>

#include "port.h"

extern uint32_t __data_load, __data_start, __data_end, __bss_start, __bss_end;
extern uint32_t __stack_top;
extern int main(void);
void SysTick_Handler(void);

void Reset_Handler(void) __attribute__((noreturn));
void Fault_Handler(void) __attribute__((noreturn));

#define CPACR (*(volatile uint32_t *)0xE000ED88u)

void Reset_Handler(void)
{
    /* volatile: keeps GCC from turning the loops into memcpy/memset calls,
     * which would add ~400 bytes of library code to every image */
    const uint32_t *src = &__data_load;
    volatile uint32_t *dst = &__data_start;
    while (dst < &__data_end) {
        *dst++ = *src++;
    }
    for (dst = &__bss_start; dst < &__bss_end; ++dst) {
        *dst = 0u;
    }
#if defined(__ARM_FP)
    CPACR |= 0xFu << 20; /* CP10 and CP11: full access to the FPU */
    __asm__ volatile("dsb\n\tisb" ::: "memory");
#endif
    vst_port_exit(main());
}

void Fault_Handler(void)
{
    vst_port_write("VST fault\n");
    vst_port_exit(3);
}

typedef void (*vst_vector_t)(void);

/* Initial stack pointer, then the 15 system exceptions; no IRQs are used. */
__attribute__((section(".isr_vector"), used))
const vst_vector_t vst_vectors[16] = {
    (vst_vector_t)&__stack_top,
    Reset_Handler,
    Fault_Handler, /* NMI */
    Fault_Handler, /* HardFault */
    Fault_Handler, /* MemManage */
    Fault_Handler, /* BusFault */
    Fault_Handler, /* UsageFault */
    Fault_Handler, /* SecureFault (Armv8-M) */
    0, 0, 0,
    Fault_Handler, /* SVCall */
    Fault_Handler, /* DebugMonitor */
    0,
    Fault_Handler, /* PendSV */
    SysTick_Handler,
};
