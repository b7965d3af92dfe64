/* Padding of the last two axes ((C, H, W) images: H and W), with separate amounts at the
 * top, left, bottom and right, as ONNX Pad / torch.nn.functional.pad over the spatial axes:
 * - constant: the new positions hold `value` (0 for zero padding);
 * - reflect: mirrored without repeating the edge (torch "reflect"; each pad < the axis);
 * - edge: the edge value repeated (torch "replicate", ONNX "edge").
 * Backward hands each output gradient to the input position it was read from (reflect and
 * edge add several into one). Nothing is saved. */
#include <stdio.h>
#include <string.h>

#include "layer.h"

/* enum tlearn_pad_mode */
enum { PAD_CONSTANT = 1, PAD_REFLECT = 2, PAD_EDGE = 3 };

typedef struct pad_cfg {
    int pt, pl, pb, pr, mode;
    float value;
} pad_cfg;

static int pad_configure(tl_layer *L, const int *ia, int ni, const float *fa, int nf)
{
    /* ia: top left bottom right mode; fa: value */
    if (ni != 5 || nf != 1)
        return tl_fail(TLEARN_EINVAL, "pad '%s': expected 5 integer arguments (top, left, "
                       "bottom, right, mode) and 1 float (value)", L->name);
    pad_cfg c = {ia[0], ia[1], ia[2], ia[3], ia[4], fa[0]};
    if (c.pt < 0 || c.pl < 0 || c.pb < 0 || c.pr < 0 || c.pt > 65536 || c.pl > 65536 ||
        c.pb > 65536 || c.pr > 65536)
        return tl_fail(TLEARN_EINVAL, "pad '%s': padding (top %d, left %d, bottom %d, right %d) "
                       "must be in 0..65536", L->name, c.pt, c.pl, c.pb, c.pr);
    if (c.mode < PAD_CONSTANT || c.mode > PAD_EDGE)
        return tl_fail(TLEARN_EINVAL, "pad '%s': mode is %d, must be 1 (constant), 2 (reflect) "
                       "or 3 (edge)", L->name, c.mode);
    return tl_layer_config(L, &c, sizeof c);
}

static void pad_arguments(const tl_layer *L, int *ia, int *ni, float *fa, int *nf)
{
    const pad_cfg *c = L->cfg;
    int v[5] = {c->pt, c->pl, c->pb, c->pr, c->mode};
    memcpy(ia, v, sizeof v);
    fa[0] = c->value;
    *ni = 5;
    *nf = 1;
}

static int pad_setup(tl_layer *L, tl_rng *rng)
{
    (void)rng;
    const pad_cfg *c = L->cfg;
    tl_shape s = L->in[0];
    char b[TL_SHAPE_STR];
    if (L->ninputs != 1)
        return tl_fail(TLEARN_EINVAL, "pad '%s': needs 1 input, has %d", L->name, L->ninputs);
    if (s.rank < 2)
        return tl_fail(TLEARN_ESHAPE, "pad '%s': pads the last two axes, but its input %s has "
                       "one", L->name, tl_shape_str(s, b));
    int h = s.d[s.rank - 2], w = s.d[s.rank - 1];
    if (c->mode == PAD_REFLECT && (c->pt >= h || c->pb >= h || c->pl >= w || c->pr >= w))
        return tl_fail(TLEARN_ESHAPE, "pad '%s': reflect padding (top %d, left %d, bottom %d, "
                       "right %d) must be smaller than the input's %dx%d", L->name, c->pt, c->pl,
                       c->pb, c->pr, h, w);
    long oh = (long)h + c->pt + c->pb, ow = (long)w + c->pl + c->pr;
    if ((double)tl_shape_size(s) / ((double)h * w) * (double)oh * (double)ow > (double)INT32_MAX)
        return tl_fail(TLEARN_ESHAPE, "pad '%s': output has over 2^31 elements", L->name);
    L->out = s;
    L->out.d[s.rank - 2] = (int)oh;
    L->out.d[s.rank - 1] = (int)ow;
    return TLEARN_OK;
}

/* The input index that padded position i (in input coordinates, may be outside [0, len))
 * reads, or -1 for the constant. */
static inline int source(int i, int len, int mode)
{
    if (i >= 0 && i < len)
        return i;
    if (mode == PAD_CONSTANT)
        return -1;
    if (mode == PAD_EDGE)
        return i < 0 ? 0 : len - 1;
    return i < 0 ? -i : 2 * (len - 1) - i; /* reflect: pad < len keeps this inside */
}

/* Geometry: planes of h x w in, oh x ow out. */
static size_t pad_geom(const tl_layer *L, size_t n, int *h, int *w, int *oh, int *ow)
{
    tl_shape s = L->in[0], o = L->out;
    *h = s.d[s.rank - 2];
    *w = s.d[s.rank - 1];
    *oh = o.d[o.rank - 2];
    *ow = o.d[o.rank - 1];
    return n * (tl_shape_size(s) / ((size_t)*h * (size_t)*w));
}

static void pad_forward(tl_layer *L, const tl_exec *ex, const float *const *in, float *out,
                        size_t n, float *saved)
{
    (void)ex; (void)saved;
    const pad_cfg *c = L->cfg;
    int h, w, oh, ow;
    size_t planes = pad_geom(L, n, &h, &w, &oh, &ow);
    for (size_t q = 0; q < planes; q++) {
        const float *x = in[0] + q * (size_t)h * w;
        float *y = out + q * (size_t)oh * ow;
        for (int r = 0; r < oh; r++) {
            float *restrict yr = y + (size_t)r * ow;
            int ih = source(r - c->pt, h, c->mode);
            if (ih < 0) {
                for (int j = 0; j < ow; j++)
                    yr[j] = c->value;
                continue;
            }
            const float *xr = x + (size_t)ih * w;
            for (int j = 0; j < c->pl; j++) {
                int iw = source(j - c->pl, w, c->mode);
                yr[j] = iw < 0 ? c->value : xr[iw];
            }
            memcpy(yr + c->pl, xr, sizeof(float) * (size_t)w);
            for (int j = c->pl + w; j < ow; j++) {
                int iw = source(j - c->pl, w, c->mode);
                yr[j] = iw < 0 ? c->value : xr[iw];
            }
        }
    }
}

static void pad_backward(tl_layer *L, const tl_exec *ex, const float *const *in,
                         const float *out, const float *dout, float *const *din, int accum,
                         size_t n, const float *saved, float *const *pgrad)
{
    (void)ex; (void)in; (void)out; (void)saved; (void)pgrad;
    const pad_cfg *c = L->cfg;
    float *dx = din[0];
    if (!dx)
        return;
    int h, w, oh, ow;
    size_t planes = pad_geom(L, n, &h, &w, &oh, &ow);
    if (!accum)
        memset(dx, 0, sizeof(float) * planes * (size_t)h * w);
    for (size_t q = 0; q < planes; q++) {
        float *d = dx + q * (size_t)h * w;
        const float *g = dout + q * (size_t)oh * ow;
        for (int r = 0; r < oh; r++) {
            int ih = source(r - c->pt, h, c->mode);
            if (ih < 0)
                continue;
            const float *restrict gr = g + (size_t)r * ow;
            float *restrict dr = d + (size_t)ih * w;
            for (int j = 0; j < w; j++)
                dr[j] += gr[c->pl + j];
            if (c->mode == PAD_CONSTANT)
                continue;
            for (int j = 0; j < c->pl; j++)
                dr[source(j - c->pl, w, c->mode)] += gr[j];
            for (int j = c->pl + w; j < ow; j++)
                dr[source(j - c->pl, w, c->mode)] += gr[j];
        }
    }
}

const tl_layer_ops tl_pad_ops = {
    .kind = TLEARN_LAYER_PAD,
    .kind_name = "pad",
    .bwd_ignores_output = 1,
    .configure = pad_configure,
    .arguments = pad_arguments,
    .setup = pad_setup,
    .forward = pad_forward,
    .backward = pad_backward,
};
