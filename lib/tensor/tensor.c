#include <string.h>

#include "tensor.h"

int tl_tensor_alloc(tl_tensor *t, int ndim, const int *dims)
{
    size_t numel = 1;
    memset(t, 0, sizeof *t);
    if (ndim < 1 || ndim > 4)
        return tl_fail(TLEARN_EINVAL, "tensor rank %d is not in 1..4", ndim);
    for (int i = 0; i < ndim; i++) {
        if (dims[i] < 1 || !tl_mul_size(numel, (size_t)dims[i], &numel))
            return tl_fail(TLEARN_EINVAL, "tensor dimension %d is %d", i, dims[i]);
        t->dims[i] = dims[i];
    }
    size_t bytes;
    if (!tl_mul_size(numel, sizeof(float), &bytes))
        return tl_fail(TLEARN_ENOMEM, "tensor of %zu floats is too large", numel);
    t->data = tl_alloc_zero(bytes);
    if (!t->data)
        return tl_fail(TLEARN_ENOMEM, "out of memory for a tensor of %zu floats", numel);
    t->numel = numel;
    t->ndim = ndim;
    return TLEARN_OK;
}

void tl_tensor_free(tl_tensor *t)
{
    tl_free(t->data);
    memset(t, 0, sizeof *t);
}
