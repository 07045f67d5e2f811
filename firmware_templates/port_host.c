/* vst firmware port for the host: parity runs only, no instruction counter. */
#include <stdio.h>
#include <stdlib.h>

#include "port.h"

void vst_port_init(void) {}

void vst_port_write(const char *text)
{
    fputs(text, stdout);
}

void vst_port_exit(int status)
{
    fflush(stdout);
    exit(status);
}

uint64_t vst_port_ticks(void)
{
    return 0u;
}

uint64_t vst_port_calibrate(uint32_t *instructions)
{
    *instructions = 0u;
    return 0u;
}

void vst_port_stack_paint(void) {}

uint32_t vst_port_stack_used(void)
{
    return 0u;
}
