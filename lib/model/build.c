/* The public tlearn_model_add_* calls: each turns its arguments into the layer kind's
 * argument vector (lib/layers/layer.h) and goes through tl_model_add(), the one door that
 * checkpoints and the ONNX importer use too. Numeric validation lives in the layer's
 * configure()/setup(), so every door refuses the same things with the same message. */
#include <stdio.h>
#include <string.h>

#include "model.h"

int tlearn_model_add_dense(tlearn_model *m, const char *name, int units)
{
    return tl_model_add(m, "tlearn_model_add_dense", &tl_dense_ops, name, NULL, 0, &units, 1,
                        NULL, 0);
}

int tlearn_model_add_linear(tlearn_model *m, const char *name, int units, int bias)
{
    int ia[3] = {units, 1, bias};
    return tl_model_add(m, "tlearn_model_add_linear", &tl_dense_ops, name, NULL, 0, ia, 3,
                        NULL, 0);
}

int tlearn_model_add_flatten(tlearn_model *m, const char *name)
{
    return tl_model_add(m, "tlearn_model_add_flatten", &tl_flatten_ops, name, NULL, 0, NULL, 0,
                        NULL, 0);
}

int tlearn_model_add_activation(tlearn_model *m, const char *name, int activation, float param)
{
    static const char fn[] = "tlearn_model_add_activation";
    if (activation == TLEARN_ACT_CLIP)
        return tl_fail(TLEARN_EINVAL, "%s: clip needs its bounds: use "
                       "tlearn_model_add_activation_ex()", fn);
    /* the one param is leaky's slope: hard-sigmoid keeps torch's alpha and beta */
    return tl_model_add(m, fn, &tl_activation_ops, name, NULL, 0, &activation, 1, &param,
                        activation == TLEARN_ACT_HARDSIGMOID ? 0 : 1);
}

int tlearn_model_add_conv2d(tlearn_model *m, const char *name, int filters, int kernel,
                            int stride, int pad, int groups)
{
    int ia[11] = {filters, kernel, kernel, stride, stride, pad, pad, 1, 1, groups, 1};
    return tl_model_add(m, "tlearn_model_add_conv2d", &tl_conv2d_ops, name, NULL, 0, ia, 11,
                        NULL, 0);
}

int tlearn_model_add_conv2d_ex(tlearn_model *m, const char *name, int filters, int kh, int kw,
                               int sh, int sw, int ph, int pw, int dh, int dw, int groups,
                               int bias)
{
    int ia[11] = {filters, kh, kw, sh, sw, ph, pw, dh, dw, groups, bias};
    return tl_model_add(m, "tlearn_model_add_conv2d_ex", &tl_conv2d_ops, name, NULL, 0, ia, 11,
                        NULL, 0);
}

int tlearn_model_add_maxpool2d(tlearn_model *m, const char *name, int kernel, int stride,
                               int pad)
{
    if (stride == 0) /* PyTorch: stride defaults to the kernel size */
        stride = kernel;
    int ia[6] = {kernel, kernel, stride, stride, pad, pad};
    return tl_model_add(m, "tlearn_model_add_maxpool2d", &tl_maxpool2d_ops, name, NULL, 0, ia, 6,
                        NULL, 0);
}

int tlearn_model_add_avgpool2d(tlearn_model *m, const char *name, int kernel, int stride,
                               int pad, int count_include_pad)
{
    if (stride == 0)
        stride = kernel;
    int ia[7] = {kernel, kernel, stride, stride, pad, pad, count_include_pad};
    return tl_model_add(m, "tlearn_model_add_avgpool2d", &tl_avgpool2d_ops, name, NULL, 0, ia, 7,
                        NULL, 0);
}

int tlearn_model_add_global_avgpool(tlearn_model *m, const char *name)
{
    return tl_model_add(m, "tlearn_model_add_global_avgpool", &tl_global_avgpool_ops, name, NULL,
                        0, NULL, 0, NULL, 0);
}

int tlearn_model_add_batchnorm(tlearn_model *m, const char *name, float eps, float momentum)
{
    float fa[2] = {eps, momentum};
    return tl_model_add(m, "tlearn_model_add_batchnorm", &tl_batchnorm_ops, name, NULL, 0, NULL,
                        0, fa, 2);
}

int tlearn_model_add_dropout(tlearn_model *m, const char *name, float p)
{
    return tl_model_add(m, "tlearn_model_add_dropout", &tl_dropout_ops, name, NULL, 0, NULL, 0,
                        &p, 1);
}

/* Name of the producer of index @p i for messages: a layer or the model input. */
static const char *producer_name(const tlearn_model *m, int i)
{
    return i < 0 ? m->inputs[-1 - i].name : m->layers[i]->name;
}

int tlearn_model_add_add(tlearn_model *m, const char *name, const char *other)
{
    static const char fn[] = "tlearn_model_add_add";
    TL_CHECK_MODEL(fn, m);
    int rc = tl_check_name(fn, name);
    if (rc)
        return rc;
    if (!other)
        return tl_fail(TLEARN_EINVAL, "%s: other is NULL", fn);
    int b;
    if (!tl_model_find_producer(m, other, &b))
        return tl_fail(TLEARN_ENOTFOUND, "%s: no layer or model input named '%s'", fn, other);
    /* The first input is what the next layer would read: the previous layer, or the one
     * chosen with tlearn_model_set_next_input(). */
    int a = m->next_input == TL_NEXT_DEFAULT ? m->nlayers - 1 : m->next_input;
    tl_shape sa = tl_model_producer_shape(m, a), sb = tl_model_producer_shape(m, b);
    if (memcmp(sa.d, sb.d, sizeof sa.d) != 0) {
        char ta[TL_SHAPE_STR], tb[TL_SHAPE_STR];
        return tl_fail(TLEARN_ESHAPE, "%s: '%s' has shape %s but '%s' has shape %s; a residual "
                       "sum needs equal shapes", fn, producer_name(m, a), tl_shape_str(sa, ta),
                       producer_name(m, b), tl_shape_str(sb, tb));
    }
    int inputs[2] = {a, b};
    return tl_model_add(m, fn, &tl_add_ops, name, inputs, 2, NULL, 0, NULL, 0);
}

int tlearn_model_add_concat(tlearn_model *m, const char *name, const char *const *inputs,
                            int ninputs, int axis)
{
    static const char fn[] = "tlearn_model_add_concat";
    TL_CHECK_MODEL(fn, m);
    if (!inputs)
        return tl_fail(TLEARN_EINVAL, "%s: inputs is NULL", fn);
    if (ninputs < 2 || ninputs > TL_MAX_INPUTS)
        return tl_fail(TLEARN_EINVAL, "%s: ninputs is %d, must be 2..%d", fn, ninputs,
                       TL_MAX_INPUTS);
    int src[TL_MAX_INPUTS];
    for (int k = 0; k < ninputs; k++) {
        if (!inputs[k])
            return tl_fail(TLEARN_EINVAL, "%s: inputs[%d] is NULL", fn, k);
        if (!tl_model_find_producer(m, inputs[k], &src[k]))
            return tl_fail(TLEARN_ENOTFOUND, "%s: inputs[%d]: no layer or model input named "
                           "'%s'", fn, k, inputs[k]);
    }
    return tl_model_add(m, fn, &tl_concat_ops, name, src, ninputs, &axis, 1, NULL, 0);
}

int tlearn_model_add_slice(tlearn_model *m, const char *name, int axis, int start, int end,
                           int step)
{
    int ia[4] = {axis, start, end, step};
    return tl_model_add(m, "tlearn_model_add_slice", &tl_slice_ops, name, NULL, 0, ia, 4, NULL,
                        0);
}

/* rank and an array of rank ints, as the argument vector {rank, v0 .. v{rank-1}}. */
static int rank_vector(const char *fn, const char *what, int rank, const int *v, int *ia)
{
    if (rank < 1 || rank > TL_MAX_RANK)
        return tl_fail(TLEARN_EINVAL, "%s: rank is %d, must be 1..%d", fn, rank, TL_MAX_RANK);
    if (!v)
        return tl_fail(TLEARN_EINVAL, "%s: %s is NULL", fn, what);
    ia[0] = rank;
    memcpy(ia + 1, v, sizeof(int) * (size_t)rank);
    return TLEARN_OK;
}

int tlearn_model_add_reshape(tlearn_model *m, const char *name, int rank, const int *dims)
{
    static const char fn[] = "tlearn_model_add_reshape";
    TL_CHECK_MODEL(fn, m);
    int ia[1 + TL_MAX_RANK], rc = rank_vector(fn, "dims", rank, dims, ia);
    return rc ? rc : tl_model_add(m, fn, &tl_reshape_ops, name, NULL, 0, ia, 1 + rank, NULL, 0);
}

int tlearn_model_add_transpose(tlearn_model *m, const char *name, int rank, const int *perm)
{
    static const char fn[] = "tlearn_model_add_transpose";
    TL_CHECK_MODEL(fn, m);
    int ia[1 + TL_MAX_RANK], rc = rank_vector(fn, "perm", rank, perm, ia);
    return rc ? rc : tl_model_add(m, fn, &tl_transpose_ops, name, NULL, 0, ia, 1 + rank, NULL,
                                  0);
}

int tlearn_model_add_binary(tlearn_model *m, const char *name, int op, const char *a,
                            const char *b)
{
    static const char fn[] = "tlearn_model_add_binary";
    TL_CHECK_MODEL(fn, m);
    int rc = tl_check_name(fn, name);
    if (rc)
        return rc;
    if (!b)
        return tl_fail(TLEARN_EINVAL, "%s: b is NULL", fn);
    /* a NULL: what the next layer would read, as tlearn_model_add_add() */
    int inputs[2] = {m->next_input == TL_NEXT_DEFAULT ? m->nlayers - 1 : m->next_input, 0};
    const char *names[2] = {a, b};
    for (int k = 0; k < 2; k++)
        if (names[k] && !tl_model_find_producer(m, names[k], &inputs[k]))
            return tl_fail(TLEARN_ENOTFOUND, "%s: no layer or model input named '%s'", fn,
                           names[k]);
    return tl_model_add(m, fn, &tl_binary_ops, name, inputs, 2, &op, 1, NULL, 0);
}

int tlearn_model_add_scale(tlearn_model *m, const char *name, int rank, const int *dims,
                           int bias)
{
    static const char fn[] = "tlearn_model_add_scale";
    TL_CHECK_MODEL(fn, m);
    if (!dims)
        return tl_fail(TLEARN_EINVAL, "%s: dims is NULL", fn);
    if (rank < 1 || rank > TL_MAX_RANK)
        return tl_fail(TLEARN_EINVAL, "%s: rank %d is not in 1..%d", fn, rank, TL_MAX_RANK);
    int ia[TL_MAX_RANK + 2];
    ia[0] = rank;
    memcpy(ia + 1, dims, sizeof(int) * (size_t)rank);
    ia[rank + 1] = bias;
    return tl_model_add(m, fn, &tl_scale_ops, name, NULL, 0, ia, rank + 2, NULL, 0);
}

int tlearn_model_add_activation_ex(tlearn_model *m, const char *name, int activation,
                                   const float *params, int nparams)
{
    static const char fn[] = "tlearn_model_add_activation_ex";
    TL_CHECK_MODEL(fn, m);
    if (nparams < 0 || nparams > 2 || (nparams > 0 && !params))
        return tl_fail(TLEARN_EINVAL, "%s: %d parameters at %p: expected 0 to 2", fn, nparams,
                       (const void *)params);
    return tl_model_add(m, fn, &tl_activation_ops, name, NULL, 0, &activation, 1, params,
                        nparams);
}

int tlearn_model_add_softmax(tlearn_model *m, const char *name, int axis)
{
    return tl_model_add(m, "tlearn_model_add_softmax", &tl_softmax_ops, name, NULL, 0, &axis, 1,
                        NULL, 0);
}

int tlearn_model_add_layernorm(tlearn_model *m, const char *name, int naxes, float eps,
                               int affine)
{
    static const char fn[] = "tlearn_model_add_layernorm";
    if (naxes < 1) /* 0 is the channel mode, which has its own call */
        return tl_fail(TLEARN_EINVAL, "%s: naxes is %d, must be >= 1 (the channel axis: "
                       "tlearn_model_add_layernorm_channels)", fn, naxes);
    int ia[2] = {naxes, affine};
    return tl_model_add(m, fn, &tl_layernorm_ops, name, NULL, 0, ia, 2, &eps, 1);
}

int tlearn_model_add_layernorm_channels(tlearn_model *m, const char *name, float eps, int affine)
{
    int ia[2] = {0, affine};
    return tl_model_add(m, "tlearn_model_add_layernorm_channels", &tl_layernorm_ops, name, NULL,
                        0, ia, 2, &eps, 1);
}

int tlearn_model_add_maxpool2d_ex(tlearn_model *m, const char *name, int kh, int kw, int sh,
                                  int sw, int pt, int pl, int pb, int pr, int dh, int dw,
                                  int ceil_mode)
{
    int ia[11] = {kh, kw, sh ? sh : kh, sw ? sw : kw, pt, pl, pb, pr, dh, dw, ceil_mode};
    return tl_model_add(m, "tlearn_model_add_maxpool2d_ex", &tl_maxpool2d_ops, name, NULL, 0, ia,
                        11, NULL, 0);
}

int tlearn_model_add_avgpool2d_ex(tlearn_model *m, const char *name, int kh, int kw, int sh,
                                  int sw, int pt, int pl, int pb, int pr, int ceil_mode,
                                  int count_include_pad)
{
    int ia[10] = {kh, kw, sh ? sh : kh, sw ? sw : kw, pt, pl, count_include_pad, pb, pr,
                  ceil_mode};
    return tl_model_add(m, "tlearn_model_add_avgpool2d_ex", &tl_avgpool2d_ops, name, NULL, 0, ia,
                        10, NULL, 0);
}

int tlearn_model_add_adaptive_avgpool(tlearn_model *m, const char *name, int oh, int ow)
{
    int ia[2] = {oh, ow};
    return tl_model_add(m, "tlearn_model_add_adaptive_avgpool", &tl_adaptive_avgpool_ops, name,
                        NULL, 0, ia, 2, NULL, 0);
}

int tlearn_model_add_pad(tlearn_model *m, const char *name, int top, int left, int bottom,
                         int right, int mode, float value)
{
    int ia[5] = {top, left, bottom, right, mode};
    return tl_model_add(m, "tlearn_model_add_pad", &tl_pad_ops, name, NULL, 0, ia, 5, &value, 1);
}

int tlearn_model_add_matmul(tlearn_model *m, const char *name, const char *a, const char *b,
                            int transpose_b)
{
    static const char fn[] = "tlearn_model_add_matmul";
    TL_CHECK_MODEL(fn, m);
    int rc = tl_check_name(fn, name);
    if (rc)
        return rc;
    const char *names[2] = {a, b};
    int inputs[2];
    for (int k = 0; k < 2; k++) {
        if (!names[k])
            return tl_fail(TLEARN_EINVAL, "%s: input %s is NULL", fn, k ? "b" : "a");
        if (!tl_model_find_producer(m, names[k], &inputs[k]))
            return tl_fail(TLEARN_ENOTFOUND, "%s: no layer or model input named '%s'", fn,
                           names[k]);
    }
    return tl_model_add(m, fn, &tl_matmul_ops, name, inputs, 2, &transpose_b, 1, NULL, 0);
}

int tlearn_model_add_drop_path(tlearn_model *m, const char *name, float p)
{
    return tl_model_add(m, "tlearn_model_add_drop_path", &tl_drop_path_ops, name, NULL, 0, NULL,
                        0, &p, 1);
}

/* ---- transformer layers ---- */

int tlearn_model_add_embedding(tlearn_model *m, const char *name, int vocab, int dim,
                               int padding_idx)
{
    static const char fn[] = "tlearn_model_add_embedding";
    TL_CHECK_MODEL(fn, m);
    int src = m->next_input == TL_NEXT_DEFAULT ? m->nlayers - 1 : m->next_input;
    if (src >= 0 || m->inputs[-1 - src].dtype != TLEARN_DTYPE_INT32)
        return tl_fail(TLEARN_EINVAL, "%s: layer '%s' must read an int32 model input of token "
                       "ids, not '%s'", fn, name ? name : "(null)", producer_name(m, src));
    int ia[3] = {vocab, dim, padding_idx};
    return tl_model_add(m, fn, &tl_embedding_ops, name, &src, 1, ia, 3, NULL, 0);
}

int tlearn_model_add_position_embedding(tlearn_model *m, const char *name, int max_len,
                                        int sinusoidal)
{
    int ia[2] = {max_len, sinusoidal};
    return tl_model_add(m, "tlearn_model_add_position_embedding", &tl_position_embedding_ops,
                        name, NULL, 0, ia, 2, NULL, 0);
}

/* The next input and, when @p mask names one, a mask producer: the inputs of attention and
 * token_pool. Returns the count (1 or 2), or -1 with the message set. */
static int with_mask(const char *fn, const tlearn_model *m, const char *mask, int inputs[2])
{
    inputs[0] = m->next_input == TL_NEXT_DEFAULT ? m->nlayers - 1 : m->next_input;
    if (!mask)
        return 1;
    if (!tl_model_find_producer(m, mask, &inputs[1])) {
        tl_fail(TLEARN_ENOTFOUND, "%s: no layer or model input named '%s' for the mask", fn,
                mask);
        return -1;
    }
    return 2;
}

int tlearn_model_add_attention(tlearn_model *m, const char *name, int heads, int causal,
                               const char *mask)
{
    static const char fn[] = "tlearn_model_add_attention";
    TL_CHECK_MODEL(fn, m);
    int inputs[2], k = with_mask(fn, m, mask, inputs), ia[2] = {heads, causal};
    if (k < 0)
        return TLEARN_ENOTFOUND;
    return tl_model_add(m, fn, &tl_attention_ops, name, inputs, k, ia, 2, NULL, 0);
}

int tlearn_model_add_token_pool(tlearn_model *m, const char *name, int mean, const char *mask)
{
    static const char fn[] = "tlearn_model_add_token_pool";
    TL_CHECK_MODEL(fn, m);
    int inputs[2], k = with_mask(fn, m, mask, inputs);
    if (k < 0)
        return TLEARN_ENOTFOUND;
    if (k == 2 && !mean)
        return tl_fail(TLEARN_EINVAL, "%s: a mask only applies to mean pooling", fn);
    return tl_model_add(m, fn, &tl_token_pool_ops, name, inputs, k, &mean, 1, NULL, 0);
}

int tlearn_model_add_patch_embed(tlearn_model *m, const char *name, int dim, int patch,
                                 int class_token, int positions)
{
    int ia[4] = {dim, patch, class_token, positions};
    return tl_model_add(m, "tlearn_model_add_patch_embed", &tl_patch_embed_ops, name, NULL, 0,
                        ia, 4, NULL, 0);
}

/* ---- the encoder block ---- */

typedef struct block_ctx {
    tlearn_model *m;
    const char *name;
    char buf[TL_NAME_MAX];
} block_ctx;

/* "name.part" in the context's buffer. */
static const char *part(block_ctx *b, const char *p)
{
    snprintf(b->buf, sizeof b->buf, "%s.%s", b->name, p);
    return b->buf;
}

/* The layers of one sublayer's output path: dropout (when p > 0), then the residual sum
 * with @p skip, named name.<drop> and name.<add>. */
static int residual(block_ctx *b, const char *drop, float p, const char *add, const char *skip)
{
    int rc = p > 0.0f ? tlearn_model_add_dropout(b->m, part(b, drop), p) : TLEARN_OK;
    char s[TL_NAME_MAX];
    snprintf(s, sizeof s, "%s", skip);
    return rc ? rc : tlearn_model_add_add(b->m, part(b, add), s);
}

static int block_layers(block_ctx *b, const char *x, int heads, int ff_dim, int activation,
                        int norm_first, float dropout, const char *mask, int d)
{
    tlearn_model *m = b->m;
    char res[TL_NAME_MAX]; /* what the second residual adds back */
    int rc = tlearn_model_set_next_input(m, x);
    if (!rc && norm_first)
        rc = tlearn_model_add_layernorm(m, part(b, "norm1"), 1, 1e-5f, 1);
    if (!rc)
        rc = tlearn_model_add_attention(m, part(b, "self_attn"), heads, 0, mask);
    if (!rc)
        rc = residual(b, "dropout1", dropout, "add1", x);
    if (!rc)
        rc = tlearn_model_add_layernorm(m, part(b, norm_first ? "norm2" : "norm1"), 1, 1e-5f,
                                        1);
    /* pre-norm adds the feed-forward to the first sum, post-norm to norm1's output */
    snprintf(res, sizeof res, "%s.%s", b->name, norm_first ? "add1" : "norm1");
    if (!rc)
        rc = tlearn_model_add_linear(m, part(b, "linear1"), ff_dim, 1);
    if (!rc)
        rc = tlearn_model_add_activation(m, part(b, "activation"), activation, 0.0f);
    if (!rc && dropout > 0.0f)
        rc = tlearn_model_add_dropout(m, part(b, "dropout"), dropout);
    if (!rc)
        rc = tlearn_model_add_linear(m, part(b, "linear2"), d, 1);
    if (!rc)
        rc = residual(b, "dropout2", dropout, "add2", res);
    if (!rc && !norm_first)
        rc = tlearn_model_add_layernorm(m, part(b, "norm2"), 1, 1e-5f, 1);
    return rc;
}

int tlearn_model_add_transformer_block(tlearn_model *m, const char *name, int heads,
                                       int ff_dim, int activation, int norm_first,
                                       float dropout, const char *mask)
{
    static const char fn[] = "tlearn_model_add_transformer_block";
    TL_CHECK_MODEL(fn, m);
    int rc = tl_check_name(fn, name);
    if (rc)
        return rc;
    if (strlen(name) + sizeof ".activation" > TL_NAME_MAX)
        return tl_fail(TLEARN_EINVAL, "%s: name '%s' is too long for its layers' names "
                       "('%s.activation' must fit in %d bytes)", fn, name, name, TL_NAME_MAX - 1);
    if (norm_first != 0 && norm_first != 1)
        return tl_fail(TLEARN_EINVAL, "%s: norm_first is %d, must be 0 or 1", fn, norm_first);
    if (ff_dim < 1)
        return tl_fail(TLEARN_EINVAL, "%s: ff_dim is %d, must be >= 1", fn, ff_dim);
    if (!(dropout >= 0.0f && dropout < 1.0f))
        return tl_fail(TLEARN_EINVAL, "%s: dropout is %g, must be in [0, 1)", fn,
                       (double)dropout);
    int x = m->next_input == TL_NEXT_DEFAULT ? m->nlayers - 1 : m->next_input;
    if (x < -m->ninputs || x >= m->nlayers)
        return tl_fail(TLEARN_ESHAPE, "%s: the model has no layers to read from", fn);
    tl_shape s = tl_model_producer_shape(m, x);
    if (s.rank != 2) {
        char t[TL_SHAPE_STR];
        return tl_fail(TLEARN_ESHAPE, "%s: the input is %s, expected a sequence (T, D)", fn,
                       tl_shape_str(s, t));
    }
    if (heads < 1 || s.d[1] % heads)
        return tl_fail(TLEARN_ESHAPE, "%s: %d heads do not divide dimension %d", fn, heads,
                       s.d[1]);
    int mk;
    if (mask && !tl_model_find_producer(m, mask, &mk))
        return tl_fail(TLEARN_ENOTFOUND, "%s: no layer or model input named '%s' for the "
                       "mask", fn, mask);
    /* Every layer name must be free before the first layer is added. */
    static const char *const parts[] = {"self_attn", "dropout1", "add1", "norm1", "linear1",
                                        "activation", "dropout", "linear2", "dropout2", "add2",
                                        "norm2"};
    block_ctx b = {m, name, {0}};
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++)
        if (tl_model_find_producer(m, part(&b, parts[i]), &mk))
            return tl_fail(TLEARN_EINVAL, "%s: a layer or input named '%s' already exists", fn,
                           b.buf);
    int nl = m->nlayers, next = m->next_input;
    char xname[TL_NAME_MAX];
    snprintf(xname, sizeof xname, "%s", producer_name(m, x));
    rc = block_layers(&b, xname, heads, ff_dim, activation, norm_first, dropout, mask, s.d[1]);
    if (rc) { /* a failed call changes nothing: remove what was added */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tlearn_errmsg());
        tlearn_model_truncate(m, nl ? m->layers[nl - 1]->name : NULL);
        m->next_input = next;
        return tl_fail(rc, "%s: block '%s': %s", fn, name, msg);
    }
    return TLEARN_OK;
}

int tlearn_model_add_prototype(tlearn_model *m, const char *name, int classes,
                               float temperature, int learn_temperature)
{
    int ia[2] = {classes, learn_temperature};
    return tl_model_add(m, "tlearn_model_add_prototype", &tl_prototype_ops, name, NULL, 0, ia, 2,
                        &temperature, 1);
}

int tlearn_model_add_grad_reverse(tlearn_model *m, const char *name, float lambda)
{
    return tl_model_add(m, "tlearn_model_add_grad_reverse", &tl_grad_reverse_ops, name, NULL, 0,
                        NULL, 0, &lambda, 1);
}
