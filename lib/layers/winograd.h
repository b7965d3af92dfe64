/* Winograd F(2x2, 3x3) forward for 3x3 convolutions with stride 1, no dilation and one
 * group (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): 16
 * GEMMs of F x Cin by Cin x tiles replace one of F x 9*Cin by 9*Cin x pixels, 2.25x fewer
 * multiplications. Used by conv2d.c's forward; backward keeps im2col. */
#ifndef TL_WINOGRAD_H
#define TL_WINOGRAD_H
#include "layer.h"

typedef struct tl_wino {
    int cin, filters, hin, win, ph, pw, hout, wout;
    /* The input gradient of a convolution is the convolution of the output gradient with
     * its filters rotated by 180 degrees, input and output channels swapped (and padding
     * 2 - pad): flip reads OIHW weights of the forward layer that way. */
    int flip;
    int accumulate; /* out += instead of out = */
} tl_wino;

/* Floats of scratch for a batch of n. */
size_t tl_wino_scratch_floats(const tl_wino *w, size_t n);

/* The transformed filters U (16 x filters x cin floats) of OIHW weights. */
size_t tl_wino_filter_floats(const tl_wino *w);
void tl_wino_transform_filters(const tl_wino *w, const float *weight, float *U, int threads);

/* out = conv(x) + bias for n images, then ex->epilogue (TL_EPILOGUE_RELU, _POOL2) exactly
 * as conv2d's own output pass would apply it. bias may be NULL; U NULL: transform the
 * filters here (into scratch). */
void tl_wino_forward(const tl_wino *w, const tl_exec *ex, const float *x, const float *weight,
                     const float *U, const float *bias, float *out, size_t n);
/* dw = the gradient of the forward's loss w.r.t. its OIHW weights, from the inputs x and
 * the output gradient dy of n images (the adjoint of the forward: dU = sum over tiles of
 * (A dy A^T) (B^T x B)^T, then dw = G^T dU G). */
void tl_wino_weight_grad(const tl_wino *w, const tl_exec *ex, const float *x, const float *dy,
                         float *dw, size_t n);
#endif
