/* vst size probe: the smallest program that runs the model once. Its image
 * (startup + model + the library code the model pulls in + input/output
 * buffers) is what the model costs on a part; it is linked, never run. */
#include "port.h"
#include "vst_glue.h"

static vst_elem_t probe_input[VST_IN_SIZE];
static vst_elem_t probe_output[VST_OUT_SIZE];

int main(void)
{
    return VST_INFER(probe_input, probe_output);
}
