/* Depthwise convolution (groups = input channels = filters, as MobileNet and EfficientNet
 * use) by direct loops: per image and channel, each kernel tap adds a scaled, shifted input
 * plane to the output plane, contiguous along rows for stride 1 so that it vectorises. im2col
 * + GEMM would run one 1 x kh*kw by kh*kw x pixels GEMM per channel, where BLIS's per-call
 * overhead dominates. Used by conv2d.c for forward and backward. */
#ifndef TL_DEPTHWISE_H
#define TL_DEPTHWISE_H
#include <stddef.h>

/* Kernels up to this many taps (8 x 8) take the direct path. */
#define TL_DW_MAX_TAPS 64

typedef struct tl_dw {
    int channels, hin, win, hout, wout, kh, kw, sh, sw, ph, pw, dh, dw;
} tl_dw;

/* y = conv(x) + bias (bias may be NULL), then max(0, y) when @p relu. */
void tl_dw_forward(const tl_dw *d, const float *x, const float *w, const float *bias, int relu,
                   float *y, size_t n, int threads);
/* dx (=, or += with @p accum) and dw (=) from dy; either may be NULL. */
void tl_dw_backward(const tl_dw *d, const float *x, const float *w, const float *dy, float *dx,
                    int accum, float *dw, size_t n, int threads);

/* The output positions o in [0, count) whose input coordinate o*s - pad + off lies in
 * [0, size): [*lo, *hi). Shared with conv2d.c's im2col. */
void tl_conv_valid_range(int count, int s, int pad, int off, int size, int *lo, int *hi);

#endif
