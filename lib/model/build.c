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
    return tl_model_add(m, "tlearn_model_add_activation", &tl_activation_ops, name, NULL, 0,
                        &activation, 1, &param, 1);
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

int tlearn_model_add_prototype(tlearn_model *m, const char *name, int classes,
                               float temperature, int learn_temperature)
{
    int ia[2] = {classes, learn_temperature};
    return tl_model_add(m, "tlearn_model_add_prototype", &tl_prototype_ops, name, NULL, 0, ia, 2,
                        &temperature, 1);
}
