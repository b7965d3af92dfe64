/* Bottleneck adapters (Houlsby et al. 2019): after a layer L (after the LoRA sums on L, if
 * any), adapter "ad" inserts
 *   L.bottleneck_down.ad  linear to `hidden` units (1x1 conv for (C, H, W) outputs)
 *   L.bottleneck_act.ad   activation
 *   L.bottleneck_up.ad    linear back to L's width, weight and bias zero
 *   L.bottleneck.ad       add: L + up(act(down(L)))
 * and L's readers read the sum, so the model is unchanged until the adapter trains. */
#include <stdio.h>
#include <string.h>

#include "adapters.h"

/* Remove the blocks of adapter @p ad (rollback): each is the 4 layers ending in its add. */
static void remove_blocks(tlearn_model *m, const char *ad)
{
    char suffix[TL_NAME_MAX + 16];
    snprintf(suffix, sizeof suffix, ".bottleneck.%s", ad);
    size_t sl = strlen(suffix);
    for (int j = m->nlayers - 1; j >= 3; j--) {
        if (j >= m->nlayers)
            continue;
        const tl_layer *L = m->layers[j];
        size_t n = strlen(L->name);
        if (L->ops == &tl_add_ops && n > sl && strcmp(L->name + n - sl, suffix) == 0)
            tl_model_remove(m, j - 3, 4, j, L->input[0]);
    }
}

int tlearn_adapter_add_bottleneck(tlearn_model *m, const char *adapter, const char *glob,
                                  int hidden, int activation)
{
    static const char fn[] = "tlearn_adapter_add_bottleneck";
    TL_CHECK_MODEL(fn, m);
    int rc = tl_adapter_check_name(fn, adapter);
    if (rc)
        return rc;
    if (!glob)
        return tl_fail(TLEARN_EINVAL, "%s: glob is NULL", fn);
    if (hidden < 1)
        return tl_fail(TLEARN_EINVAL, "%s: hidden is %d, must be >= 1", fn, hidden);
    if (activation < TLEARN_ACT_RELU || activation > TLEARN_ACT_LEAKY_RELU)
        return tl_fail(TLEARN_EINVAL, "%s: unknown activation %d", fn, activation);
    char suffix[TL_NAME_MAX + 16];
    snprintf(suffix, sizeof suffix, ".bottleneck.%s", adapter);
    for (int i = 0; i < m->nlayers; i++) {
        size_t a = strlen(m->layers[i]->name), b = strlen(suffix);
        if (a > b && strcmp(m->layers[i]->name + a - b, suffix) == 0)
            return tl_fail(TLEARN_EINVAL, "%s: the model has a bottleneck adapter '%s' already",
                           fn, adapter);
    }
    char(*names)[TL_NAME_MAX] = tl_alloc_array((size_t)m->nlayers + 1, TL_NAME_MAX);
    if (!names)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    int n = 0;
    for (int i = 0; i < m->nlayers; i++) {
        const tl_layer *L = m->layers[i];
        if (tl_adapter_part(L) || !tl_glob_match(glob, L->name))
            continue;
        if (strlen(L->name) + strlen(".bottleneck_down.") + strlen(adapter) >= TL_NAME_MAX) {
            rc = tl_fail(TLEARN_EINVAL, "%s: layer '%s': the adapter's layer names would "
                         "exceed %d bytes", fn, L->name, TL_NAME_MAX - 1);
            break;
        }
        strcpy(names[n++], L->name);
    }
    if (!rc && !n)
        rc = tl_fail(TLEARN_ENOTFOUND, "%s: '%s' matches no layer", fn, glob);
    tl_rng rng = m->rng;
    for (int k = 0; !rc && k < n; k++) {
        int t = tl_model_find(m, names[k]), c = tl_adapter_chain_end(m, t);
        tl_shape out = m->layers[c]->out;
        int image = out.rank == 3, width = image ? out.c : out.d[out.rank - 1];
        char nd[TL_NAME_MAX + 32], na[TL_NAME_MAX + 32], nu[TL_NAME_MAX + 32], ns[TL_NAME_MAX + 32];
        snprintf(nd, sizeof nd, "%s.bottleneck_down.%s", names[k], adapter);
        snprintf(na, sizeof na, "%s.bottleneck_act.%s", names[k], adapter);
        snprintf(nu, sizeof nu, "%s.bottleneck_up.%s", names[k], adapter);
        snprintf(ns, sizeof ns, "%s.bottleneck.%s", names[k], adapter);
        int lin_d[3] = {hidden, 1, 1}, lin_u[3] = {width, 1, 1};
        int conv_d[11] = {hidden, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1};
        int conv_u[11] = {width, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1};
        const tl_layer_ops *lin = image ? &tl_conv2d_ops : &tl_dense_ops;
        float param = 0.01f; /* leaky ReLU's slope, as PyTorch's default */
        tl_insert_spec sp[4] = {
            {lin, nd, 1, {c, 0}, image ? conv_d : lin_d, image ? 11 : 3, NULL, 0},
            {&tl_activation_ops, na, 1, {c + 1, 0}, &activation, 1, &param, 1},
            {lin, nu, 1, {c + 2, 0}, image ? conv_u : lin_u, image ? 11 : 3, NULL, 0},
            {&tl_add_ops, ns, 2, {c, c + 3}, NULL, 0, NULL, 0},
        };
        tl_layer *made[4];
        rc = tl_model_insert(m, fn, c, sp, 4, c, c + 4, made);
        for (int p = 0; !rc && p < made[2]->nparam; p++) /* up starts at zero */
            memset(made[2]->param[p].t.data, 0, sizeof(float) * made[2]->param[p].t.numel);
    }
    if (rc) {
        remove_blocks(m, adapter);
        m->rng = rng;
    }
    tl_free(names);
    return rc;
}
