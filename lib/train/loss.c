#include <math.h>

#include "train.h"

int tl_check_labels(const char *fn, const int32_t *labels, size_t n, int classes)
{
    for (size_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return tl_fail(TLEARN_EINVAL, "%s: labels[%zu] is %d, must be in 0..%d", fn, i,
                           (int)labels[i], classes - 1);
    return TLEARN_OK;
}

double tl_loss_softmax_ce(const float *logits, const int32_t *labels, size_t n, int classes,
                          float *dlogits, size_t *correct)
{
    double total = 0.0;
    size_t hits = 0;
    float inv_n = 1.0f / (float)n;
    for (size_t i = 0; i < n; i++) {
        const float *z = logits + i * (size_t)classes;
        float mx = z[0];
        int arg = 0;
        for (int j = 1; j < classes; j++)
            if (z[j] > mx) {
                mx = z[j];
                arg = j;
            }
        hits += arg == labels[i];
        double sum = 0.0;
        for (int j = 0; j < classes; j++)
            sum += exp((double)z[j] - mx); /* the difference in double, not float */
        double lse = log(sum) + mx;
        total += lse - z[labels[i]];
        if (dlogits) {
            float *d = dlogits + i * (size_t)classes;
            for (int j = 0; j < classes; j++)
                d[j] = (float)exp((double)z[j] - lse) * inv_n;
            d[labels[i]] -= inv_n;
        }
    }
    if (correct)
        *correct = hits;
    return total / (double)n;
}

double tl_loss_mse(const float *out, const float *targets, size_t n, size_t size, float *dout)
{
    size_t total = n * size;
    double sum = 0.0;
    double scale = 2.0 / (double)total;
    for (size_t i = 0; i < total; i++) {
        double d = (double)out[i] - targets[i]; /* in double: no float rounding of d */
        sum += d * d;
        if (dout)
            dout[i] = (float)(scale * d);
    }
    return sum / (double)total;
}
