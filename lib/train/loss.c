#include <math.h>
#include <string.h>

#include "train.h"

int tl_check_labels(const char *fn, const int32_t *labels, size_t n, int classes)
{
    for (size_t i = 0; i < n; i++)
        if (labels[i] < 0 || labels[i] >= classes)
            return tl_fail(TLEARN_EINVAL, "%s: labels[%zu] is %d, must be in 0..%d", fn, i,
                           (int)labels[i], classes - 1);
    return TLEARN_OK;
}

/* Cross-entropy of one row of logits against @p label in double; with @p d, the gradient
 * softmax - onehot times @p scale. *arg receives the argmax. */
static double row_ce(const float *z, int label, int classes, float *d, float scale, int *arg)
{
    float mx = z[0];
    *arg = 0;
    for (int j = 1; j < classes; j++)
        if (z[j] > mx) {
            mx = z[j];
            *arg = j;
        }
    double sum = 0.0;
    for (int j = 0; j < classes; j++)
        sum += exp((double)z[j] - mx); /* the difference in double, not float */
    double lse = log(sum) + mx;
    if (d) {
        for (int j = 0; j < classes; j++)
            d[j] = (float)exp((double)z[j] - lse) * scale;
        d[label] -= scale;
    }
    return lse - z[label];
}

double tl_loss_softmax_ce(const float *logits, const int32_t *labels, size_t n, int classes,
                          float *dlogits, size_t *correct)
{
    double total = 0.0;
    size_t hits = 0;
    float inv_n = 1.0f / (float)n;
    for (size_t i = 0; i < n; i++) {
        int arg;
        total += row_ce(logits + i * (size_t)classes, labels[i], classes,
                        dlogits ? dlogits + i * (size_t)classes : NULL, inv_n, &arg);
        hits += arg == labels[i];
    }
    if (correct)
        *correct = hits;
    return total / (double)n;
}

double tl_loss_token_ce(const float *logits, const int32_t *labels, size_t rows, int classes,
                        int32_t ignore, float *dlogits)
{
    size_t counted = 0;
    for (size_t i = 0; i < rows; i++)
        counted += labels[i] != ignore;
    double total = 0.0;
    float scale = 1.0f / (float)counted;
    for (size_t i = 0; i < rows; i++) {
        float *d = dlogits ? dlogits + i * (size_t)classes : NULL;
        int arg;
        if (labels[i] != ignore)
            total += row_ce(logits + i * (size_t)classes, labels[i], classes, d, scale, &arg);
        else if (d)
            memset(d, 0, sizeof(float) * (size_t)classes);
    }
    return total / (double)counted;
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
