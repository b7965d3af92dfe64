/* LoRA (Hu et al. 2021, as PEFT implements it) built from ordinary layers. On a target T
 * (dense / linear, or conv2d with groups 1) with input x, adapter "ad" inserts right after
 * T (or after the last LoRA sum already on T):
 *   T.lora_dropout.ad  dropout(p) on x                      (only when p > 0)
 *   T.lora_A.ad        dense without bias, r units (T's flatten/last-axis mode), or a conv
 *                      with T's kernel, stride, padding and dilation, r filters, no bias;
 *                      PyTorch's default init = PEFT's kaiming_uniform_(a=sqrt(5))
 *   T.lora_B.ad        linear / 1x1 conv without bias, T's width, zero: the model starts
 *                      unchanged
 *   T.lora.ad          lora_sum: T + alpha/r (rsLoRA alpha/sqrt(r)) * weight * B(A(x))
 * and every reader of T (or of the previous sum) reads T.lora.ad instead. T is frozen, so
 * it costs no gradient and no optimizer state. A site's layers are contiguous, which is
 * what removal (rollback, tlearn_lora_remove) relies on.
 *
 * Files: PEFT's adapter_model.safetensors (base_model.model.<T>.lora_A.weight [r, in...],
 * lora_B.weight [out, r...]) and adapter_config.json. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../io/io.h"
#include "adapters.h"

#define MAX_SITES 4096
#define PEFT_PREFIX "base_model.model."

/* One target's LoRA branch: layer indexes (drop -1 without dropout). */
typedef struct site {
    int t, first, drop, a, b, sum;
} site;

int tl_adapter_part(const tl_layer *L)
{
    return L->ops == &tl_lora_sum_ops || strstr(L->name, ".lora_") ||
           strstr(L->name, ".lora.") || strstr(L->name, ".bottleneck_") ||
           strstr(L->name, ".bottleneck.");
}

int tl_adapter_chain_end(const tlearn_model *m, int t)
{
    int cur = t;
    for (int j = t + 1; j < m->nlayers; j++) {
        const tl_layer *L = m->layers[j];
        if (L->ops == &tl_lora_sum_ops && L->input[0] == cur)
            cur = j;
    }
    return cur;
}

int tl_adapter_check_name(const char *fn, const char *adapter)
{
    if (!adapter)
        return tl_fail(TLEARN_EINVAL, "%s: adapter name is NULL", fn);
    int rc = tl_check_name(fn, adapter);
    if (!rc && strchr(adapter, '.'))
        rc = tl_fail(TLEARN_EINVAL, "%s: adapter name '%s' must not contain '.'", fn, adapter);
    return rc;
}

/* The target of the LoRA sum at @p j (the first non-sum layer down its base inputs). */
static int sum_target(const tlearn_model *m, int j)
{
    int t = j;
    while (t >= 0 && m->layers[t]->ops == &tl_lora_sum_ops)
        t = m->layers[t]->input[0];
    return t;
}

/* The adapter name of the LoRA sum at @p j, or NULL when it is not named as ours. */
static const char *sum_adapter(const tlearn_model *m, int j)
{
    int t = sum_target(m, j);
    if (t < 0)
        return NULL;
    const char *tn = m->layers[t]->name, *sn = m->layers[j]->name;
    size_t k = strlen(tn);
    if (strncmp(sn, tn, k) != 0 || strncmp(sn + k, ".lora.", 6) != 0)
        return NULL;
    return sn + k + 6;
}

/* The site whose sum is layer @p j. */
static site site_at(const tlearn_model *m, int j)
{
    site s = {sum_target(m, j), 0, -1, 0, m->layers[j]->input[1], j};
    s.a = m->layers[s.b]->input[0];
    int x = m->layers[s.a]->input[0];
    if (x > s.t && m->layers[x]->ops == &tl_dropout_ops)
        s.drop = x;
    s.first = s.drop >= 0 ? s.drop : s.a;
    return s;
}

/* The sites of adapter @p ad, in graph order; returns their count (<= cap). */
static int find_sites(const tlearn_model *m, const char *ad, site *out, int cap)
{
    int n = 0;
    for (int j = 0; j < m->nlayers && n < cap; j++) {
        const char *a = m->layers[j]->ops == &tl_lora_sum_ops ? sum_adapter(m, j) : NULL;
        if (a && strcmp(a, ad) == 0)
            out[n++] = site_at(m, j);
    }
    return n;
}

/* Sum settings: ia r rslora merged; fa alpha weight. */
static void read_sum(const tl_layer *L, int *r, int *rslora, int *merged, float *alpha,
                     float *weight)
{
    int ia[TL_MAX_IARGS], ni, nf;
    float fa[TL_MAX_FARGS];
    L->ops->arguments(L, ia, &ni, fa, &nf);
    *r = ia[0];
    *rslora = ia[1];
    *merged = ia[2];
    *alpha = fa[0];
    *weight = fa[1];
}

/* The factor the sum applies while not merged: computed as lora_sum computes it. */
static float sum_factor(const tl_layer *L)
{
    int r, rs, merged;
    float alpha, weight;
    read_sum(L, &r, &rs, &merged, &alpha, &weight);
    double s = rs ? (double)alpha / sqrt((double)r) : (double)alpha / r;
    return (float)(s * weight);
}

/* Reconfigure the sums of @p n sites to (weight[k], merged[k]) all or nothing: new
 * configurations are made first, swapped in only when all exist. */
static int set_sums(const char *fn, tlearn_model *m, const site *s, int n, const float *weight,
                    const int *merged)
{
    void **cfg = tl_alloc_array((size_t)n + 1, sizeof *cfg);
    if (!cfg)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    int rc = TLEARN_OK, k = 0;
    for (; k < n; k++) {
        tl_layer *L = m->layers[s[k].sum], tmp = *L;
        int r, rs, mg;
        float alpha, w;
        read_sum(L, &r, &rs, &mg, &alpha, &w);
        int ia[3] = {r, rs, merged[k]};
        float fa[2] = {alpha, weight[k]};
        rc = L->ops->configure(&tmp, ia, 3, fa, 2);
        if (rc)
            break;
        cfg[k] = tmp.cfg;
    }
    for (int j = 0; j < k; j++) {
        if (rc) {
            tl_free(cfg[j]);
        } else {
            tl_free(m->layers[s[j].sum]->cfg);
            m->layers[s[j].sum]->cfg = cfg[j];
        }
    }
    tl_free(cfg);
    return rc ? tl_fail_prefix(rc, "%s: ", fn) : TLEARN_OK;
}

static void remove_site(tlearn_model *m, const site *s)
{
    tl_model_remove(m, s->first, s->sum - s->first + 1, s->sum, m->layers[s->sum]->input[0]);
}

/* Remove every site of @p ad (last first: removal shifts later indexes). */
static void remove_adapter(tlearn_model *m, const char *ad)
{
    for (int j = m->nlayers - 1; j >= 0; j--) {
        if (j >= m->nlayers || m->layers[j]->ops != &tl_lora_sum_ops)
            continue;
        const char *a = sum_adapter(m, j);
        if (a && strcmp(a, ad) == 0) {
            site s = site_at(m, j);
            remove_site(m, &s);
        }
    }
}

/* ---- attention projections ----
 * The fused attention layer A packs its projections (in_proj_weight [3D, D]). LoRA on one of
 * them first splits A, once, into ordinary layers in its place:
 *   A.q_proj, A.k_proj, A.v_proj   linear D -> D with bias, reading A's input (the rows of
 *                                  in_proj_weight / in_proj_bias)
 *   A                              attention in its split form: Q, K, V [, mask] -> ctx
 *   A.out_proj                     linear D -> D with bias (out_proj.weight / .bias)
 * so "A.out_proj.weight" keeps its name and LoRA targets the projections like any linear
 * layer (names as HF's BART/OPT/LLaMA modules: q_proj, k_proj, v_proj, out_proj). Outputs
 * equal the fused layer's to float rounding; freeze flags follow the tensors; the split
 * stays when the adapters are removed. */
static const char *const PROJ[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};

static int fused_attention(const tl_layer *L)
{
    int ia[TL_MAX_IARGS], ni, nf;
    float fa[TL_MAX_FARGS];
    if (L->ops != &tl_attention_ops)
        return 0;
    L->ops->arguments(L, ia, &ni, fa, &nf);
    return ni < 4 || !ia[3]; /* heads causal [pad_true [split]] */
}

static int split_attention(const char *fn, tlearn_model *m, int i)
{
    tl_layer *A = m->layers[i];
    char names[5][TL_NAME_MAX + 16];
    for (int k = 0; k < 4; k++)
        snprintf(names[k], sizeof names[k], "%s.%s", A->name, PROJ[k]);
    snprintf(names[4], sizeof names[4], "%s.attend", A->name);
    if (strlen(names[4]) >= TL_NAME_MAX)
        return tl_fail(TLEARN_EINVAL, "%s: attention '%s': the projection layer names would "
                       "exceed %d bytes", fn, A->name, TL_NAME_MAX - 1);
    int ia[TL_MAX_IARGS], ni, nf;
    float fa[TL_MAX_FARGS];
    A->ops->arguments(A, ia, &ni, fa, &nf);
    int d = A->in[0].d[1], x = A->input[0];
    int lin[3] = {d, 1, 1}, core[4] = {ia[0], ia[1], ni > 2 ? ia[2] : 0, 1};
    tl_insert_spec sp[5];
    for (int k = 0; k < 3; k++)
        sp[k] = (tl_insert_spec){&tl_dense_ops, names[k], 1, {x}, lin, 3, NULL, 0};
    sp[3] = (tl_insert_spec){&tl_attention_ops, names[4], A->ninputs + 2,
                             {i + 1, i + 2, i + 3, A->ninputs > 1 ? A->input[1] : 0}, core, 4,
                             NULL, 0};
    sp[4] = (tl_insert_spec){&tl_dense_ops, names[3], 1, {i + 4}, lin, 3, NULL, 0};
    tl_layer *made[5];
    tl_rng rng = m->rng;
    int rc = tl_model_insert(m, fn, i, sp, 5, i, i + 5, made);
    m->rng = rng; /* the weights are copied, not drawn */
    if (rc)
        return rc;
    /* Weights: views of A's (in_proj rows k*D.. for projection k; out_proj whole), counted
     * (tensor.c), so a split of a handle that shares A's tensors copies nothing; they are
     * copied on write like any shared tensor. Then the freeze flags. */
    const tl_layer_state *st = &m->lstate[i];
    size_t dd = (size_t)d * d;
    tl_tensor views[8];
    for (int k = 0; k < 4 && !rc; k++)
        for (int b = 0; b < 2 && !rc; b++) {
            int w = (k < 3 ? 0 : 2) + b; /* in_proj_weight/bias or out_proj.weight/bias */
            size_t off = k < 3 ? (size_t)k * (b ? (size_t)d : dd) : 0;
            const int dims[2] = {d, d};
            rc = tl_tensor_share_view(&views[2 * k + b], &A->param[w].t, off, 2 - b, dims);
            if (rc)
                for (int j = 0; j < 2 * k + b; j++)
                    tl_tensor_free(&views[j]);
        }
    if (rc) {
        tl_model_remove(m, i + 1, 5, i + 5, i);
        return tl_fail_prefix(rc, "%s: ", fn);
    }
    for (int k = 0; k < 4; k++) {
        tl_layer *P = made[k < 3 ? k : 4];
        int w = k < 3 ? 0 : 2;
        for (int b = 0; b < 2; b++) {
            tl_tensor_free(&P->param[b].t);
            P->param[b].t = views[2 * k + b];
        }
        tl_layer_state *ps = &m->lstate[tl_model_find(m, P->name)];
        unsigned bits = st->frozen ? 3u : st->frozen_params >> w & 3u;
        tl_frozen_unpack(ps, bits == 3u ? 1u : bits << TL_FROZEN_PARAMS_SHIFT);
        ps->lr_scale = st->lr_scale;
    }
    char name[TL_NAME_MAX];
    snprintf(name, sizeof name, "%s", A->name);
    tl_model_remove(m, i, 1, TL_NO_REROUTE, 0);
    tl_model_rename(m, i + 3, name);
    (void)tl_model_sync_slots(m, 0); /* frees nothing new; allocates nothing */
    return TLEARN_OK;
}

/* Split every fused attention layer one of whose projection names ("A.q_proj", ...)
 * satisfies @p match (last first: a split shifts the later layers). What the adapter
 * @p ad then refuses (names too long, EWC) is refused before the first split, so only
 * ENOMEM can leave a split behind a failed call. */
static int split_matching(const char *fn, tlearn_model *m,
                          int (*match)(const void *ctx, const char *name), const void *ctx,
                          const char *ad)
{
    for (int pass = 0; pass < 2; pass++)
        for (int i = m->nlayers - 1; i >= 0; i--) {
            const tl_layer *L = m->layers[i];
            if (!fused_attention(L))
                continue;
            int hit = 0;
            for (int k = 0; k < 4 && !hit; k++) {
                char nm[TL_NAME_MAX + 16];
                snprintf(nm, sizeof nm, "%s.%s", L->name, PROJ[k]);
                hit = match(ctx, nm);
            }
            if (!hit)
                continue;
            if (pass == 1) {
                int rc = split_attention(fn, m, i);
                if (rc)
                    return rc;
            } else if (m->ewc) {
                return tl_fail(TLEARN_ESTATE, "%s: EWC or L2-SP is enabled; its per-layer "
                               "tables do not follow inserted layers", fn);
            } else if (strlen(L->name) + strlen(".out_proj.lora_dropout.") + strlen(ad) >=
                       TL_NAME_MAX) {
                return tl_fail(TLEARN_EINVAL, "%s: attention '%s': the LoRA layer names of "
                               "its projections would exceed %d bytes", fn, L->name,
                               TL_NAME_MAX - 1);
            }
        }
    return TLEARN_OK;
}

static int glob_match(const void *glob, const char *name)
{
    return tl_glob_match(glob, name);
}

static int targetable(const tl_layer *L)
{
    return (L->ops == &tl_dense_ops || L->ops == &tl_conv2d_ops) && !tl_adapter_part(L);
}

/* Insert adapter @p ad on the targets @p names (all or nothing). */
static int add_sites(const char *fn, tlearn_model *m, const char *ad, char (*names)[TL_NAME_MAX],
                     int n, int r, float alpha, float p, int rslora)
{
    /* Validate every target before changing anything. */
    for (int k = 0; k < n; k++) {
        int t = tl_model_find(m, names[k]);
        const tl_layer *T = m->layers[t];
        if (strlen(T->name) + strlen(".lora_dropout.") + strlen(ad) >= TL_NAME_MAX)
            return tl_fail(TLEARN_EINVAL, "%s: layer '%s': the LoRA layer names would exceed "
                           "%d bytes", fn, T->name, TL_NAME_MAX - 1);
        if (T->ops == &tl_conv2d_ops) {
            int ia[TL_MAX_IARGS], ni, nf;
            float fa[TL_MAX_FARGS];
            T->ops->arguments(T, ia, &ni, fa, &nf);
            if (ia[9] != 1)
                return tl_fail(TLEARN_EINVAL, "%s: conv2d '%s' has %d groups; LoRA supports "
                               "groups = 1", fn, T->name, ia[9]);
        }
    }
    tl_rng rng = m->rng;
    int rc = TLEARN_OK;
    for (int k = 0; !rc && k < n; k++) {
        int t = tl_model_find(m, names[k]);
        const tl_layer *T = m->layers[t];
        int c = tl_adapter_chain_end(m, t), x = T->input[0];
        int ia[TL_MAX_IARGS], ni, nf;
        float fa[TL_MAX_FARGS];
        T->ops->arguments(T, ia, &ni, fa, &nf);
        char nd[TL_NAME_MAX + 32], na[TL_NAME_MAX + 32], nb[TL_NAME_MAX + 32], ns[TL_NAME_MAX + 32];
        snprintf(nd, sizeof nd, "%s.lora_dropout.%s", T->name, ad);
        snprintf(na, sizeof na, "%s.lora_A.%s", T->name, ad);
        snprintf(nb, sizeof nb, "%s.lora_B.%s", T->name, ad);
        snprintf(ns, sizeof ns, "%s.lora.%s", T->name, ad);
        int conv = T->ops == &tl_conv2d_ops;
        int dense_a[3] = {r, ni > 1 ? ia[1] : 0, 0};  /* T's flatten / last-axis mode */
        int dense_b[3] = {ia[0], 1, 0};               /* over A's last axis */
        int conv_a[11] = {r, ia[1], ia[2], ia[3], ia[4], ia[5], ia[6], ia[7], ia[8], 1, 0};
        int conv_b[11] = {ia[0], 1, 1, 1, 1, 0, 0, 1, 1, 1, 0};
        int sum_i[3] = {r, rslora, 0};
        float sum_f[2] = {alpha, 1.0f};
        tl_insert_spec sp[4];
        int q = 0, base = c + 1;
        if (p > 0.0f) {
            sp[q++] = (tl_insert_spec){&tl_dropout_ops, nd, 1, {x, 0}, NULL, 0, &p, 1};
            x = base;
        }
        const tl_layer_ops *lin = conv ? &tl_conv2d_ops : &tl_dense_ops;
        sp[q++] = (tl_insert_spec){lin, na, 1, {x, 0}, conv ? conv_a : dense_a, conv ? 11 : 3,
                                   NULL, 0};
        sp[q] = (tl_insert_spec){lin, nb, 1, {base + q - 1, 0}, conv ? conv_b : dense_b,
                                 conv ? 11 : 3, NULL, 0};
        q++;
        sp[q] = (tl_insert_spec){&tl_lora_sum_ops, ns, 2, {c, base + q - 1}, sum_i, 3, sum_f, 2};
        q++;
        tl_layer *made[4];
        rc = tl_model_insert(m, fn, c, sp, q, c, c + q, made);
        if (!rc) { /* B starts at zero: the model is unchanged until B trains */
            tl_tensor *wb = &made[q - 2]->param[0].t;
            memset(wb->data, 0, sizeof(float) * wb->numel);
        }
    }
    if (rc) {
        remove_adapter(m, ad);
        m->rng = rng;
    }
    return rc;
}

/* Freeze the targets of @p ad: no gradient, no optimizer state. */
static void freeze_targets(tlearn_model *m, const char *ad)
{
    site s[MAX_SITES];
    int n = find_sites(m, ad, s, MAX_SITES);
    for (int k = 0; k < n; k++)
        tl_frozen_unpack(&m->lstate[s[k].t], 1u);
    tl_plan_free(&m->plan_train);
    /* frees the frozen slots' gradients and state; allocates nothing */
    (void)tl_model_sync_slots(m, 0);
}

static int check_common(const char *fn, const tlearn_model *m, const char *ad)
{
    TL_CHECK_MODEL(fn, m);
    return tl_adapter_check_name(fn, ad);
}

static int check_hyper(const char *fn, int r, float alpha, float dropout)
{
    if (r < 1 || r > 65536)
        return tl_fail(TLEARN_EINVAL, "%s: r is %d, must be 1..65536", fn, r);
    if (!isfinite(alpha))
        return tl_fail(TLEARN_EINVAL, "%s: alpha must be finite", fn);
    if (!(dropout >= 0.0f && dropout < 1.0f))
        return tl_fail(TLEARN_EINVAL, "%s: dropout is %g, must be in [0, 1)", fn,
                       (double)dropout);
    return TLEARN_OK;
}

static int adapter_exists(const tlearn_model *m, const char *ad)
{
    site s[1];
    return find_sites(m, ad, s, 1) > 0;
}

int tlearn_lora_add(tlearn_model *m, const char *adapter, const char *glob, int r, float alpha,
                    float dropout, unsigned flags)
{
    static const char fn[] = "tlearn_lora_add";
    int rc = check_common(fn, m, adapter);
    if (rc)
        return rc;
    if (!glob)
        return tl_fail(TLEARN_EINVAL, "%s: glob is NULL", fn);
    if (flags & ~TLEARN_LORA_RSLORA)
        return tl_fail(TLEARN_EINVAL, "%s: unknown flags 0x%x", fn, flags);
    if ((rc = check_hyper(fn, r, alpha, dropout)))
        return rc;
    if (adapter_exists(m, adapter))
        return tl_fail(TLEARN_EINVAL, "%s: the model has an adapter '%s' already", fn, adapter);
    if ((rc = split_matching(fn, m, glob_match, glob, adapter)))
        return rc;
    char(*names)[TL_NAME_MAX] = tl_alloc_array((size_t)m->nlayers + 1, TL_NAME_MAX);
    if (!names)
        return tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    int n = 0;
    for (int i = 0; i < m->nlayers; i++)
        if (targetable(m->layers[i]) && tl_glob_match(glob, m->layers[i]->name))
            strcpy(names[n++], m->layers[i]->name);
    if (!n)
        rc = tl_fail(TLEARN_ENOTFOUND, "%s: '%s' matches no dense, linear or conv2d layer", fn,
                     glob);
    else if (n > MAX_SITES)
        rc = tl_fail(TLEARN_EINVAL, "%s: '%s' matches %d layers, at most %d", fn, glob, n,
                     MAX_SITES);
    if (!rc)
        rc = add_sites(fn, m, adapter, names, n, r, alpha, dropout,
                       (flags & TLEARN_LORA_RSLORA) != 0);
    tl_free(names);
    if (!rc)
        freeze_targets(m, adapter);
    return rc;
}

static int sites_of(const char *fn, const tlearn_model *m, const char *ad, site *s, int *n)
{
    int rc = check_common(fn, m, ad);
    if (rc)
        return rc;
    *n = find_sites(m, ad, s, MAX_SITES);
    if (!*n)
        return tl_fail(TLEARN_ENOTFOUND, "%s: no LoRA adapter named '%s'", fn, ad);
    return TLEARN_OK;
}

/* Every adapter's sites at once, with the new weight of each (set_weight, set_active). */
static int set_weights(const char *fn, tlearn_model *m, const char *only, int active,
                       float weight)
{
    int n = 0;
    site *s = tl_alloc_array(MAX_SITES, sizeof *s);
    float *w = tl_alloc_array(MAX_SITES, sizeof *w);
    int *mg = tl_alloc_array(MAX_SITES, sizeof *mg);
    int rc = !s || !w || !mg ? tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn) : 0;
    int found = 0;
    for (int j = 0; !rc && j < m->nlayers; j++) {
        const char *a = m->layers[j]->ops == &tl_lora_sum_ops ? sum_adapter(m, j) : NULL;
        if (!a || (!active && strcmp(a, only) != 0))
            continue;
        if (n == MAX_SITES) {
            rc = tl_fail(TLEARN_EINVAL, "%s: more than %d LoRA sites", fn, MAX_SITES);
            break;
        }
        int r, rs, merged;
        float alpha, old;
        read_sum(m->layers[j], &r, &rs, &merged, &alpha, &old);
        int mine = only && strcmp(a, only) == 0;
        found |= mine;
        float nw = active ? (float)mine : weight;
        if (merged && nw != old)
            rc = tl_fail(TLEARN_ESTATE, "%s: adapter '%s' is merged; unmerge it first", fn, a);
        s[n].sum = j;
        w[n] = nw;
        mg[n++] = merged;
    }
    if (!rc && only && !found)
        rc = tl_fail(TLEARN_ENOTFOUND, "%s: no LoRA adapter named '%s'", fn, only);
    if (!rc && active && !n)
        rc = tl_fail(TLEARN_ENOTFOUND, "%s: the model has no LoRA adapter", fn);
    if (!rc)
        rc = set_sums(fn, m, s, n, w, mg);
    tl_free(s);
    tl_free(w);
    tl_free(mg);
    return rc;
}

int tlearn_lora_set_weight(tlearn_model *m, const char *adapter, float weight)
{
    static const char fn[] = "tlearn_lora_set_weight";
    int rc = check_common(fn, m, adapter);
    if (rc)
        return rc;
    if (!isfinite(weight))
        return tl_fail(TLEARN_EINVAL, "%s: weight must be finite", fn);
    return set_weights(fn, m, adapter, 0, weight);
}

int tlearn_lora_set_active(tlearn_model *m, const char *adapter)
{
    static const char fn[] = "tlearn_lora_set_active";
    TL_CHECK_MODEL(fn, m);
    int rc = adapter ? tl_adapter_check_name(fn, adapter) : 0;
    return rc ? rc : set_weights(fn, m, adapter, 1, 0.0f);
}

/* W += sign * D with D[i][j] = (float)(e * sum_k B[i][k] A[k][j]) in double: the same D
 * for merge and unmerge, whatever BLAS runs. */
static void fold(tl_tensor *W, const tl_tensor *A, const tl_tensor *B, float e, float sign)
{
    int rows = W->dims[0], r = A->dims[0];
    size_t cols = W->numel / (size_t)rows;
    for (int i = 0; i < rows; i++)
        for (size_t j = 0; j < cols; j++) {
            double acc = 0.0;
            for (int k = 0; k < r; k++)
                acc += (double)B->data[(size_t)i * r + k] * A->data[(size_t)k * cols + j];
            float d = (float)((double)e * acc);
            W->data[(size_t)i * cols + j] += sign * d;
        }
}

static int merge(const char *fn, tlearn_model *m, const char *ad, int to)
{
    site *s = tl_alloc_array(MAX_SITES, sizeof *s);
    float *w = tl_alloc_array(MAX_SITES, sizeof *w);
    int *mg = tl_alloc_array(MAX_SITES, sizeof *mg);
    int n = 0;
    int rc = !s || !w || !mg ? tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn)
                             : sites_of(fn, m, ad, s, &n);
    float *e = NULL;
    if (!rc && !(e = tl_alloc_array((size_t)n, sizeof *e)))
        rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    for (int k = 0; !rc && k < n; k++) {
        int r, rs, merged;
        float alpha;
        read_sum(m->layers[s[k].sum], &r, &rs, &merged, &alpha, &w[k]);
        if (merged == to)
            rc = tl_fail(TLEARN_ESTATE, "%s: adapter '%s' is %s", fn, ad,
                         to ? "merged already" : "not merged");
        e[k] = sum_factor(m->layers[s[k].sum]);
        mg[k] = to;
        if (!rc) /* the target's weight may be shared with other handles: copy on write */
            rc = tl_model_own_param(m, s[k].t, 0);
    }
    if (!rc)
        rc = set_sums(fn, m, s, n, w, mg);
    for (int k = 0; !rc && k < n; k++)
        fold(&m->layers[s[k].t]->param[0].t, &m->layers[s[k].a]->param[0].t,
             &m->layers[s[k].b]->param[0].t, e[k], to ? 1.0f : -1.0f);
    if (!rc)
        m->has_grads = 0;
    tl_free(e);
    tl_free(s);
    tl_free(w);
    tl_free(mg);
    return rc;
}

int tlearn_lora_merge(tlearn_model *m, const char *adapter)
{
    return merge("tlearn_lora_merge", m, adapter, 1);
}

int tlearn_lora_unmerge(tlearn_model *m, const char *adapter)
{
    return merge("tlearn_lora_unmerge", m, adapter, 0);
}

int tlearn_lora_remove(tlearn_model *m, const char *adapter)
{
    static const char fn[] = "tlearn_lora_remove";
    site s[1];
    int n = 0;
    int rc = check_common(fn, m, adapter);
    if (!rc && !(n = find_sites(m, adapter, s, 1)))
        rc = tl_fail(TLEARN_ENOTFOUND, "%s: no LoRA adapter named '%s'", fn, adapter);
    if (rc)
        return rc;
    int r, rs, merged;
    float alpha, weight;
    read_sum(m->layers[s[0].sum], &r, &rs, &merged, &alpha, &weight);
    if (merged)
        return tl_fail(TLEARN_ESTATE, "%s: adapter '%s' is merged; unmerge it first", fn,
                       adapter);
    if (m->ewc)
        return tl_fail(TLEARN_ESTATE, "%s: EWC or L2-SP is enabled; its per-layer tables do "
                       "not follow removed layers", fn);
    remove_adapter(m, adapter);
    return TLEARN_OK;
}

/* ---- files in PEFT's layout ---- */

static int join(const char *fn, char *buf, size_t cap, const char *dir, const char *file)
{
    if ((size_t)snprintf(buf, cap, "%s/%s", dir, file) >= cap)
        return tl_fail(TLEARN_EINVAL, "%s: the path '%s/%s' is too long", fn, dir, file);
    return TLEARN_OK;
}

int tlearn_lora_save(const tlearn_model *m, const char *adapter, const char *dir)
{
    static const char fn[] = "tlearn_lora_save";
    site *s = tl_alloc_array(MAX_SITES, sizeof *s);
    tl_st_tensor *ts = tl_alloc_array(2 * MAX_SITES, sizeof *ts);
    char *names = tl_alloc_array(2 * MAX_SITES, TL_TENSOR_NAME_MAX + 32);
    int n = 0;
    int rc = !s || !ts || !names ? tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn)
                                 : sites_of(fn, m, adapter, s, &n);
    char path[4096];
    if (!rc && !dir)
        rc = tl_fail(TLEARN_EINVAL, "%s: dir is NULL", fn);
    if (!rc && mkdir(dir, 0777) != 0 && errno != EEXIST)
        rc = tl_fail(TLEARN_EIO, "%s: cannot create '%s': %s", fn, dir, strerror(errno));
    int r = 0, rs = 0, merged;
    float alpha = 0, weight, p = 0;
    if (!rc) {
        read_sum(m->layers[s[0].sum], &r, &rs, &merged, &alpha, &weight);
        if (s[0].drop >= 0) {
            int ia[TL_MAX_IARGS], ni, nf;
            float fa[TL_MAX_FARGS];
            const tl_layer *D = m->layers[s[0].drop];
            D->ops->arguments(D, ia, &ni, fa, &nf);
            p = fa[0];
        }
    }
    for (int k = 0; !rc && k < n; k++) {
        const char *tn = m->layers[s[k].t]->name;
        for (int h = 0; h < 2; h++) {
            char *nm = names + (size_t)(2 * k + h) * (TL_TENSOR_NAME_MAX + 32);
            snprintf(nm, TL_TENSOR_NAME_MAX + 32, PEFT_PREFIX "%s.lora_%c.weight", tn,
                     h ? 'B' : 'A');
            ts[2 * k + h].name = nm;
            ts[2 * k + h].t = &m->layers[h ? s[k].b : s[k].a]->param[0].t;
            rc = tl_check_values(TLEARN_ENONFINITE, fn, nm, ts[2 * k + h].t->data,
                                 ts[2 * k + h].t->numel, 0);
            if (rc)
                break;
        }
    }
    if (!rc)
        rc = join(fn, path, sizeof path, dir, "adapter_model.safetensors");
    if (!rc)
        rc = tl_safetensors_write(fn, path, ts, 2 * (size_t)n);
    if (!rc) {
        tl_wbuf b = {0};
        char tmp[256];
        int k = snprintf(tmp, sizeof tmp, "{\n  \"peft_type\": \"LORA\",\n  \"r\": %d,\n"
                         "  \"lora_alpha\": %.9g,\n  \"lora_dropout\": %.9g,\n"
                         "  \"use_rslora\": %s,\n  \"bias\": \"none\",\n"
                         "  \"fan_in_fan_out\": false,\n  \"target_modules\": [", r,
                         (double)alpha, (double)p, rs ? "true" : "false");
        tl_wb_bytes(&b, tmp, (size_t)k);
        for (int j = 0; j < n; j++) {
            if (j)
                tl_wb_bytes(&b, ", ", 2);
            tl_wb_json_str(&b, m->layers[s[j].t]->name);
        }
        tl_wb_bytes(&b, "]\n}\n", 4);
        rc = b.oom ? tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn)
                   : join(fn, path, sizeof path, dir, "adapter_config.json");
        if (!rc)
            rc = tl_file_write_atomic(fn, path, b.p, b.len);
        tl_wb_free(&b);
    }
    tl_free(s);
    tl_free(ts);
    tl_free(names);
    return rc;
}

/* A JSON number as a double (the token is validated by the parser). */
static int json_number(const tl_json *j, double *v)
{
    if (!j || j->type != TL_JSON_NUMBER || j->numlen >= 64)
        return 0;
    char buf[64];
    memcpy(buf, j->num, j->numlen);
    buf[j->numlen] = 0;
    *v = strtod(buf, NULL);
    return 1;
}

/* PEFT's target_modules rule for a list: a module matches a name when it is the name or
 * ends with "." + name. A string is taken as a glob (PEFT reads it as a regex). */
static int peft_target(const tl_json *tm, const char *layer)
{
    if (tm->type == TL_JSON_STRING)
        return tl_glob_match(tm->str, layer);
    size_t ln = strlen(layer);
    for (size_t i = 0; i < tm->n; i++) {
        const char *t = tm->items[i].str;
        size_t tn = strlen(t);
        if (strcmp(layer, t) == 0 ||
            (ln > tn && layer[ln - tn - 1] == '.' && strcmp(layer + ln - tn, t) == 0))
            return 1;
    }
    return 0;
}

static int peft_match(const void *targets, const char *layer)
{
    return peft_target(targets, layer);
}

typedef struct map_ctx {
    const char *ad;
} map_ctx;

/* base_model.model.<T>.lora_A.weight -> <T>.lora_A.<ad>.weight; anything else keeps its
 * name, so that the import refuses it as not in the model. */
static int map_name(const char *file, char *out, size_t cap, void *user)
{
    const map_ctx *c = user;
    size_t len = strlen(file), pre = strlen(PEFT_PREFIX), suf = strlen(".lora_A.weight");
    if (len > pre + suf && strncmp(file, PEFT_PREFIX, pre) == 0 &&
        (strcmp(file + len - suf, ".lora_A.weight") == 0 ||
         strcmp(file + len - suf, ".lora_B.weight") == 0)) {
        int k = snprintf(out, cap, "%.*s.lora_%c.%s.weight", (int)(len - pre - suf),
                         file + pre, file[len - 8], c->ad);
        if (k > 0 && (size_t)k < cap)
            return 1;
    }
    snprintf(out, cap, "%s", file);
    return 1;
}

static int parse_config(const char *fn, const tl_json *cfg, int *r, float *alpha, float *p,
                        int *rslora, const tl_json **targets)
{
    const tl_json *v;
    double d;
    uint64_t u;
    if (cfg->type != TL_JSON_OBJECT)
        return tl_fail(TLEARN_EFORMAT, "%s: adapter_config.json: expected an object", fn);
    if ((v = tl_json_get(cfg, "peft_type")) && (v->type != TL_JSON_STRING ||
                                                 strcmp(v->str, "LORA") != 0))
        return tl_fail(TLEARN_EFORMAT, "%s: adapter_config.json: peft_type is not \"LORA\"", fn);
    if (!tl_json_u64(tl_json_get(cfg, "r"), &u) || u < 1 || u > 65536)
        return tl_fail(TLEARN_EFORMAT, "%s: adapter_config.json: 'r' must be an integer in "
                       "1..65536", fn);
    *r = (int)u;
    *alpha = (float)*r; /* PEFT's default lora_alpha is 8 with r 8: keep the scale 1 */
    if ((v = tl_json_get(cfg, "lora_alpha"))) {
        if (!json_number(v, &d) || !isfinite((float)d))
            return tl_fail(TLEARN_EFORMAT, "%s: adapter_config.json: 'lora_alpha' is not a "
                           "finite number", fn);
        *alpha = (float)d;
    }
    *p = 0.0f;
    if ((v = tl_json_get(cfg, "lora_dropout"))) {
        if (!json_number(v, &d) || !(d >= 0.0 && d < 1.0))
            return tl_fail(TLEARN_EFORMAT, "%s: adapter_config.json: 'lora_dropout' must be in "
                           "[0, 1)", fn);
        *p = (float)d;
    }
    *rslora = 0;
    if ((v = tl_json_get(cfg, "use_rslora")) && v->type == TL_JSON_BOOL)
        *rslora = v->boolean;
    if ((v = tl_json_get(cfg, "bias")) && v->type == TL_JSON_STRING && strcmp(v->str, "none"))
        return tl_fail(TLEARN_EFORMAT, "%s: adapter_config.json: bias \"%s\" is not supported "
                       "(only \"none\")", fn, v->str);
    if ((v = tl_json_get(cfg, "fan_in_fan_out")) && v->type == TL_JSON_BOOL && v->boolean)
        return tl_fail(TLEARN_EFORMAT, "%s: adapter_config.json: fan_in_fan_out is not "
                       "supported", fn);
    v = tl_json_get(cfg, "target_modules");
    int ok = v && (v->type == TL_JSON_STRING || v->type == TL_JSON_ARRAY);
    for (size_t i = 0; ok && v->type == TL_JSON_ARRAY && i < v->n; i++)
        ok = v->items[i].type == TL_JSON_STRING;
    if (!ok)
        return tl_fail(TLEARN_EFORMAT, "%s: adapter_config.json: 'target_modules' must be a "
                       "string or a list of strings", fn);
    *targets = v;
    return TLEARN_OK;
}

int tlearn_lora_load(tlearn_model *m, const char *adapter, const char *dir)
{
    static const char fn[] = "tlearn_lora_load";
    int rc = check_common(fn, m, adapter);
    if (rc)
        return rc;
    if (!dir)
        return tl_fail(TLEARN_EINVAL, "%s: dir is NULL", fn);
    if (adapter_exists(m, adapter))
        return tl_fail(TLEARN_EINVAL, "%s: the model has an adapter '%s' already", fn, adapter);
    char path[4096];
    unsigned char *text = NULL, *st = NULL;
    size_t tlen, slen;
    tl_json *cfg = NULL;
    const tl_json *targets = NULL;
    int r = 0, rslora = 0;
    float alpha = 0, p = 0;
    rc = join(fn, path, sizeof path, dir, "adapter_config.json");
    if (!rc)
        rc = tl_file_read(fn, path, &text, &tlen);
    if (!rc)
        rc = tl_json_parse(fn, (const char *)text, tlen, &cfg);
    if (!rc)
        rc = parse_config(fn, cfg, &r, &alpha, &p, &rslora, &targets);
    if (!rc)
        rc = join(fn, path, sizeof path, dir, "adapter_model.safetensors");
    if (!rc)
        rc = tl_file_read(fn, path, &st, &slen);
    if (!rc)
        rc = split_matching(fn, m, peft_match, targets, adapter);
    char(*names)[TL_NAME_MAX] = NULL;
    int n = 0;
    if (!rc && !(names = tl_alloc_array((size_t)m->nlayers + 1, TL_NAME_MAX)))
        rc = tl_fail(TLEARN_ENOMEM, "%s: out of memory", fn);
    for (int i = 0; !rc && i < m->nlayers; i++)
        if (targetable(m->layers[i]) && peft_target(targets, m->layers[i]->name))
            strcpy(names[n++], m->layers[i]->name);
    if (!rc && !n)
        rc = tl_fail(TLEARN_ENOTFOUND, "%s: the adapter's target_modules match no dense, "
                     "linear or conv2d layer of the model", fn);
    if (!rc && n > MAX_SITES)
        rc = tl_fail(TLEARN_EINVAL, "%s: %d targets, at most %d", fn, n, MAX_SITES);
    if (!rc)
        rc = add_sites(fn, m, adapter, names, n, r, alpha, p, rslora);
    if (!rc) {
        map_ctx c = {adapter};
        size_t matched = 0;
        rc = tl_safetensors_import_buffer(fn, m, st, slen, map_name, &c, TL_ST_FILE_STRICT,
                                          &matched);
        if (!rc && matched != 2 * (size_t)n)
            rc = tl_fail(TLEARN_ENOTFOUND, "%s: the file holds %zu of the %d LoRA tensors "
                         "its targets need (lora_A and lora_B of each of %d layers)", fn,
                         matched, 2 * n, n);
        if (rc)
            remove_adapter(m, adapter);
    }
    if (!rc)
        freeze_targets(m, adapter);
    tl_free(names);
    tl_json_free(cfg);
    tl_free(text);
    tl_free(st);
    return rc;
}
