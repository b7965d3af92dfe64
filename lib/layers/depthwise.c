/* Depthwise convolution by direct loops (depthwise.h). */
#include <string.h>

#include "depthwise.h"
#include "layer.h"

/* The per-plane loops are compute-bound in L1 (a plane row is reused by every tap), so they
 * are function clones (TL_CLONES, layer.h). */

void tl_conv_valid_range(int count, int s, int pad, int off, int size, int *lo, int *hi)
{
    int base = off - pad; /* input coordinate of o = 0 */
    int l = base >= 0 ? 0 : (-base + s - 1) / s;
    int h = size - 1 - base < 0 ? 0 : (size - 1 - base) / s + 1;
    if (h > count)
        h = count;
    if (l > h)
        l = h;
    *lo = l;
    *hi = h;
}

/* The rows [oh0, oh1) and columns [ow0, ow1) of output that a kernel tap reaches, the
 * offset of output (0, 0)'s input for it (may be negative), and its index in the kernel. */
typedef struct tap {
    int oh0, oh1, ow0, ow1, k;
    ptrdiff_t base;
} tap;

static void taps_of(const tl_dw *d, tap *t)
{
    for (int ki = 0; ki < d->kh; ki++)
        for (int kj = 0; kj < d->kw; kj++, t++) {
            tl_conv_valid_range(d->hout, d->sh, d->ph, ki * d->dh, d->hin, &t->oh0, &t->oh1);
            tl_conv_valid_range(d->wout, d->sw, d->pw, kj * d->dw, d->win, &t->ow0, &t->ow1);
            t->base = (ptrdiff_t)(ki * d->dh - d->ph) * d->win + (kj * d->dw - d->pw);
            t->k = ki * d->kw + kj;
        }
}

/* One output plane. With stride 1 and input rows as wide as output rows ("same" padding),
 * output (oh, ow) reads input base + oh*W + ow for every tap, so a tap adds over one long
 * contiguous span from its first valid output to its last (vectors stay full on short rows);
 * the span's wrapped-around positions (columns a tap cannot reach, at the row ends) are
 * recomputed afterwards, tap by tap in the same order. */
TL_CLONES
static void forward_plane(const tl_dw *d, const tap *taps, const float *xp, const float *wc,
                          float b, int relu, float *yp)
{
    int W = d->wout, K = d->kh * d->kw;
    size_t P = (size_t)d->hout * W;
    ptrdiff_t rs = (ptrdiff_t)d->sh * d->win, sw = d->sw;
    int span = d->sh == 1 && sw == 1 && d->win == W, left = 0, right = 0;
    for (size_t p = 0; p < P; p++)
        yp[p] = b;
    for (int k = 0; k < K; k++) {
        const tap *t = &taps[k];
        float wv = wc[t->k];
        if (t->oh1 <= t->oh0 || t->ow1 <= t->ow0)
            continue;
        if (span) {
            size_t first = (size_t)t->oh0 * W + t->ow0, end = (size_t)(t->oh1 - 1) * W + t->ow1;
            const float *restrict xs = xp + t->base;
            float *restrict ys = yp;
#pragma omp simd
            for (size_t p = first; p < end; p++)
                ys[p] += wv * xs[p];
            left = t->ow0 > left ? t->ow0 : left;
            right = W - t->ow1 > right ? W - t->ow1 : right;
            continue;
        }
        for (int oh = t->oh0; oh < t->oh1; oh++) {
            const float *restrict xr = xp + t->base + oh * rs;
            float *restrict yr = yp + (size_t)oh * W;
            if (sw == 1) {
#pragma omp simd
                for (int ow = t->ow0; ow < t->ow1; ow++)
                    yr[ow] += wv * xr[ow];
            } else {
#pragma omp simd
                for (int ow = t->ow0; ow < t->ow1; ow++)
                    yr[ow] += wv * xr[ow * sw];
            }
        }
    }
    for (int oh = 0; (left || right) && oh < d->hout; oh++)
        for (int ow = 0; ow < W; ow++) {
            if (ow == left) /* skip the columns every tap reaches */
                ow = W - right > left ? W - right : left;
            if (ow >= W)
                break;
            float acc = b;
            for (int k = 0; k < K; k++) {
                const tap *t = &taps[k];
                if (oh >= t->oh0 && oh < t->oh1 && ow >= t->ow0 && ow < t->ow1)
                    acc += wc[t->k] * xp[t->base + (ptrdiff_t)oh * W + ow];
            }
            yp[(size_t)oh * W + ow] = acc;
        }
    if (relu)
#pragma omp simd
        for (size_t p = 0; p < P; p++)
            yp[p] = tl_relu(yp[p]);
}

/* dx plane (=, or += with accum) from a dy plane: each tap adds dy, scaled, back where it
 * read from. */
TL_CLONES
static void input_grad_plane(const tl_dw *d, const tap *taps, const float *dp, const float *wc,
                             int accum, float *xp)
{
    ptrdiff_t rs = (ptrdiff_t)d->sh * d->win, sw = d->sw;
    if (!accum)
        memset(xp, 0, sizeof(float) * (size_t)d->hin * d->win);
    for (int k = 0; k < d->kh * d->kw; k++) {
        const tap *t = &taps[k];
        float wv = wc[t->k];
        for (int oh = t->oh0; oh < t->oh1; oh++) {
            float *restrict xr = xp + t->base + oh * rs;
            const float *restrict dr = dp + (size_t)oh * d->wout;
            if (sw == 1) {
#pragma omp simd
                for (int ow = t->ow0; ow < t->ow1; ow++)
                    xr[ow] += wv * dr[ow];
            } else { /* lanes write distinct elements: the stride is >= 1 */
#pragma omp simd
                for (int ow = t->ow0; ow < t->ow1; ow++)
                    xr[ow * sw] += wv * dr[ow];
            }
        }
    }
}

/* sum over the outputs of one plane of dy * the input a tap reads, per row in float, rows
 * added in double */
TL_CLONES
static double weight_grad_plane(const tl_dw *d, const tap *t, const float *xp, const float *dp)
{
    ptrdiff_t rs = (ptrdiff_t)d->sh * d->win, sw = d->sw;
    double acc = 0.0;
    for (int oh = t->oh0; oh < t->oh1; oh++) {
        const float *restrict xr = xp + t->base + oh * rs;
        const float *restrict dr = dp + (size_t)oh * d->wout;
        float s = 0.0f;
        if (sw == 1) {
#pragma omp simd reduction(+ : s)
            for (int ow = t->ow0; ow < t->ow1; ow++)
                s += dr[ow] * xr[ow];
        } else {
#pragma omp simd reduction(+ : s)
            for (int ow = t->ow0; ow < t->ow1; ow++)
                s += dr[ow] * xr[ow * sw];
        }
        acc += (double)s;
    }
    return acc;
}

void tl_dw_forward(const tl_dw *d, const float *x, const float *w, const float *bias, int relu,
                   float *y, size_t n, int threads)
{
    tap taps[TL_DW_MAX_TAPS];
    taps_of(d, taps);
    size_t P = (size_t)d->hout * d->wout, plane = (size_t)d->hin * d->win;
    long jobs = (long)n * d->channels;
    int K = d->kh * d->kw;
    int par = tl_par_threads(threads, (size_t)jobs * P * (size_t)K);
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
    for (long j = 0; j < jobs; j++) {
        int c = (int)(j % d->channels);
        forward_plane(d, taps, x + (size_t)j * plane, w + (size_t)c * K, bias ? bias[c] : 0.0f,
                      relu, y + (size_t)j * P);
    }
}

void tl_dw_backward(const tl_dw *d, const float *x, const float *w, const float *dy, float *dx,
                    int accum, float *dw, size_t n, int threads)
{
    tap taps[TL_DW_MAX_TAPS];
    taps_of(d, taps);
    size_t P = (size_t)d->hout * d->wout, plane = (size_t)d->hin * d->win;
    int K = d->kh * d->kw;
    long jobs = (long)n * d->channels;
    int par = tl_par_threads(threads, (size_t)jobs * P * (size_t)K);
    if (dx) { /* one job per (image, channel) plane */
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
        for (long j = 0; j < jobs; j++) {
            int c = (int)(j % d->channels);
            input_grad_plane(d, taps, dy + (size_t)j * P, w + (size_t)c * K, accum,
                             dx + (size_t)j * plane);
        }
    }
    if (!dw)
        return;
    /* one job per channel, which owns its kernel's gradient: no races, and the sum does not
     * depend on the thread count */
#pragma omp parallel for num_threads(par) if (par > 1) schedule(static)
    for (int c = 0; c < d->channels; c++)
        for (int k = 0; k < K; k++) {
            double acc = 0.0;
            for (size_t i = 0; i < n; i++)
                acc += weight_grad_plane(d, &taps[k], x + (i * d->channels + c) * plane,
                                         dy + (i * d->channels + c) * P);
            dw[(size_t)c * K + taps[k].k] = (float)acc;
        }
}
