/* Constants of the checkpoint format shared by its reader (checkpoint.c) and writer
 * (checkpoint_write.c). The contract is doc/checkpoint-format.md. */
#ifndef TL_IO_CHECKPOINT_H
#define TL_IO_CHECKPOINT_H

#include <limits.h>
#include <stdio.h>

#include "io.h"

static const unsigned char TL_CK_MAGIC[8] = {0x89, 'T', 'L', 'C', 'K', 'P', '\r', '\n'};
#define CK_MAJOR 1
#define CK_MINOR 0
#define CK_HEADER 64
#define CK_ENTRY 32
#define CK_MAX_SECTIONS 64
#define CK_FLAG_INFERENCE 1u
#define CK_MAX_NAME 255
#define CK_MAX_META 4096

enum { S_MODEL = 1, S_LAYERS, S_TENSORS, S_DATA, S_OPTIMIZER, S_OPTSTATE, S_FREEZE, S_EWC,
       S_METADATA, S_GRAPH, S_SCHEDULE, S_DOMAIN, S_KINDS };

/* MODEL's next_input field: -2 is "the previous layer" (round 1's value), -1 the first
 * model input, >= 0 a layer; the other model inputs k >= 1 are -2-k. */
static inline int32_t tl_ck_next_input_to_file(int next)
{
    return next == INT_MIN ? -2 : next >= -1 ? next : next - 1;
}

/* "layer.param", as files and the public API name tensors. */
static inline void tl_ck_tensor_name(char *buf, size_t cap, const tl_layer *L, int p)
{
    snprintf(buf, cap, "%s.%s", L->name, L->param[p].name);
}

#endif
