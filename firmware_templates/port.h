/* vst firmware port: what main.c needs from the platform it runs on.
 *
 * port_cortexm.c: Arm Cortex-M in QEMU (semihosting output, SysTick counter,
 * painted stack). port_host.c: the host, for parity runs only (no counter).
 */
#ifndef VST_PORT_H
#define VST_PORT_H

#include <stdint.h>

/* Start the instruction counter (SysTick on Cortex-M). */
void vst_port_init(void);

/* Write a NUL-terminated string to the host console. */
void vst_port_write(const char *text);

/* Stop the program; status 0 means success. Never returns. */
void vst_port_exit(int status) __attribute__((noreturn));

/* Counter ticks since vst_port_init (0 on the host). */
uint64_t vst_port_ticks(void);

/* Run a loop of exactly *instructions instructions and return the ticks it
 * took, so the host can check the tick-to-instruction constant (0 on host). */
uint64_t vst_port_calibrate(uint32_t *instructions);

/* Fill the unused stack below the caller with a known pattern. */
void vst_port_stack_paint(void);

/* Bytes of stack used below the caller's stack pointer since the last paint
 * (0 on the host). Call it from the same function that called paint. */
uint32_t vst_port_stack_used(void);

#endif
