/* Adapters: LoRA branches and bottleneck adapters, built as ordinary layers inserted into
 * the graph (tl_model_insert), so no layer kind knows about them. Internal to adapters/. */
#ifndef TL_ADAPTERS_H
#define TL_ADAPTERS_H

#include "../model/model.h"

/* A layer that belongs to an adapter: lora_sum, or a name with ".lora_", ".lora.",
 * ".bottleneck_" or ".bottleneck."
 * (such layers are never targets). */
int tl_adapter_part(const tl_layer *L);
/* The last layer standing for layer @p t's output: t itself, or the last LoRA sum of the
 * chain on t. Adapters insert after it and move its readers. */
int tl_adapter_chain_end(const tlearn_model *m, int t);
/* Adapter names: layer-name rules without '.'. */
int tl_adapter_check_name(const char *fn, const char *adapter);

#endif
