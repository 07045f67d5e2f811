/* vst firmware self-test: runs every golden input through the model and
 * prints what it computed, one line per fact, for the host to compare:
 *
 *   VST begin <model> <variant> <count> <input size> <output size>
 *   VST calib <instructions> <ticks>     a loop of known length, timed
 *   VST qparams <scale hex> <zero point> int8 only: output quantization
 *   VST out <i> <v0> <v1> ...            float: IEEE-754 bits in hex; int8: decimal
 *   VST ticks <i> <n>                    counter ticks of the one inference
 *   VST stack <i> <bytes>                peak stack below main during it
 *   VST marks <i> <t0> <t1> ...          ticks from the start to the end of
 *                                        each operator (the model is compiled
 *                                        with -DVST_PROFILE for this program)
 *   VST done
 *
 * Nothing is compared here: a mismatch is measured by the host, not asserted.
 * vst_glue.h (generated per build) binds the macros to one model and variant.
 */
#include <stdint.h>
#include <string.h>

#include "port.h"
#include "vst_glue.h"
#include VST_GOLDEN_HEADER

static char line[128];
static unsigned line_len;
static vst_elem_t output[VST_OUT_SIZE];

/* Operator timing: the model calls this after each operator. */
#define VST_MAX_MARKS 64
static uint64_t marks[VST_MAX_MARKS];
static int mark_count;

void vst_profile_mark(int op);
void vst_profile_mark(int op)
{
    (void)op;
    if (mark_count < VST_MAX_MARKS) {
        marks[mark_count++] = vst_port_ticks();
    }
}

static void flush(void)
{
    line[line_len] = '\0';
    vst_port_write(line);
    line_len = 0u;
}

static void put_char(char c)
{
    if (line_len + 1u >= sizeof line) {
        flush();
    }
    line[line_len++] = c;
}

static void put_str(const char *text)
{
    while (*text != '\0') {
        put_char(*text++);
    }
}

static void put_u64(uint64_t value)
{
    char digits[20];
    int n = 0;
    do {
        digits[n++] = (char)('0' + (int)(value % 10u));
        value /= 10u;
    } while (value != 0u);
    while (n > 0) {
        put_char(digits[--n]);
    }
}

static void put_i32(int32_t value)
{
    if (value < 0) {
        put_char('-');
        put_u64((uint64_t)(-(int64_t)value));
    } else {
        put_u64((uint64_t)value);
    }
}

static void put_hex32(uint32_t value)
{
    static const char hex[] = "0123456789abcdef";
    int shift;
    for (shift = 28; shift >= 0; shift -= 4) {
        put_char(hex[(value >> shift) & 0xFu]);
    }
}

static void put_float_bits(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    put_hex32(bits);
}

static void put_fact(const char *key, int index, uint64_t value)
{
    put_str("VST ");
    put_str(key);
    put_char(' ');
    put_i32(index);
    put_char(' ');
    put_u64(value);
    put_char('\n');
    flush();
}

static void put_output(int index)
{
    int j;
    put_str("VST out ");
    put_i32(index);
    for (j = 0; j < (int)VST_OUT_SIZE; ++j) {
        put_char(' ');
#if VST_IS_INT8
        put_i32(output[j]);
#else
        put_float_bits(output[j]);
#endif
    }
    put_char('\n');
    flush();
}

static void put_marks(int index, uint64_t start)
{
    int k;
    put_str("VST marks ");
    put_i32(index);
    for (k = 0; k < mark_count; ++k) {
        put_char(' ');
        put_u64(marks[k] - start);
    }
    put_char('\n');
    flush();
}

static void put_header(void)
{
    uint32_t calib_instructions;
    uint64_t calib_ticks = vst_port_calibrate(&calib_instructions);
    put_str("VST begin " VST_MODEL_NAME " " VST_VARIANT " ");
    put_u64(VST_GOLDEN_COUNT);
    put_char(' ');
    put_u64(VST_IN_SIZE);
    put_char(' ');
    put_u64(VST_OUT_SIZE);
    put_str("\nVST calib ");
    put_u64(calib_instructions);
    put_char(' ');
    put_u64(calib_ticks);
#if VST_IS_INT8
    put_str("\nVST qparams ");
    put_float_bits(VST_OUT_SCALE);
    put_char(' ');
    put_i32(VST_OUT_ZERO_POINT);
#endif
    put_char('\n');
    flush();
}

int main(void)
{
    int i;
    vst_port_init();
    put_header();
    for (i = 0; i < (int)VST_GOLDEN_COUNT; ++i) {
        uint64_t start, end;
        int status;
        vst_port_stack_paint();
        mark_count = 0;
        start = vst_port_ticks();
        status = VST_INFER(VST_GOLDEN_IN[i], output);
        end = vst_port_ticks();
        put_fact("stack", i, vst_port_stack_used());
        if (status != 0) {
            put_fact("error", i, (uint64_t)(uint32_t)status);
            return 1;
        }
        put_fact("ticks", i, end - start);
        put_marks(i, start);
        put_output(i);
    }
    put_str("VST done\n");
    flush();
    return 0;
}
