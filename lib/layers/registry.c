/* Every layer kind, one line each. */
#include <string.h>

#include "layer.h"

static const tl_layer_ops *const all_kinds[] = {
    &tl_dense_ops,
    &tl_flatten_ops,
    &tl_activation_ops,
    &tl_conv2d_ops,
    &tl_maxpool2d_ops,
    &tl_avgpool2d_ops,
    &tl_global_avgpool_ops,
    &tl_batchnorm_ops,
    &tl_dropout_ops,
    &tl_add_ops,
    &tl_concat_ops,
    &tl_slice_ops,
    &tl_reshape_ops,
    &tl_transpose_ops,
    &tl_binary_ops,
    &tl_scale_ops,
    &tl_softmax_ops,
    &tl_layernorm_ops,
    &tl_adaptive_avgpool_ops,
    &tl_pad_ops,
    &tl_matmul_ops,
    &tl_drop_path_ops,
    &tl_embedding_ops,
    &tl_position_embedding_ops,
    &tl_attention_ops,
    &tl_token_pool_ops,
    &tl_patch_embed_ops,
    &tl_prototype_ops,
    &tl_lora_sum_ops,
    &tl_grad_reverse_ops,
};

const tl_layer_ops *tl_layer_ops_by_name(const char *kind_name)
{
    for (size_t i = 0; i < sizeof all_kinds / sizeof all_kinds[0]; i++)
        if (strcmp(all_kinds[i]->kind_name, kind_name) == 0)
            return all_kinds[i];
    return NULL;
}

const tl_layer_ops *tl_layer_ops_by_kind(int kind)
{
    for (size_t i = 0; i < sizeof all_kinds / sizeof all_kinds[0]; i++)
        if (all_kinds[i]->kind == kind)
            return all_kinds[i];
    return NULL;
}
