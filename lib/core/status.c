/* Status codes and the thread-local detail message behind tlearn_errmsg(). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "core.h"

static _Thread_local char last_message[1024];

const char *tlearn_strerror(int status)
{
    switch (status) {
    case TLEARN_OK: return "success";
    case TLEARN_EINVAL: return "invalid argument";
    case TLEARN_ENOMEM: return "out of memory";
    case TLEARN_ESHAPE: return "shape mismatch";
    case TLEARN_ENOTFOUND: return "not found";
    case TLEARN_EIO: return "input/output error";
    case TLEARN_EFORMAT: return "corrupt or invalid file";
    case TLEARN_EUNSUPPORTED: return "not supported";
    case TLEARN_ENONFINITE: return "loss or gradient is not finite";
    case TLEARN_ESTATE: return "invalid state for this call";
    case TLEARN_EVERSION: return "unsupported format version";
    case TLEARN_ECANCELED: return "canceled";
    default: return "unknown status";
    }
}

int tl_check_values(int status, const char *fn, const char *what, const float *v, size_t n,
                    int nonneg)
{
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(v[i]))
            return tl_fail(status, "%s: %s: element %zu is %g (not finite)", fn, what, i,
                           (double)v[i]);
        if (nonneg && v[i] < 0)
            return tl_fail(status, "%s: %s: element %zu is %g (a variance must be >= 0)", fn,
                           what, i, (double)v[i]);
    }
    return TLEARN_OK;
}

int tl_param_nonneg(const char *param)
{
    return strcmp(param, "running_var") == 0;
}

const char *tlearn_errmsg(void)
{
    return last_message;
}

int tl_fail(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    return status;
}

int tl_fail_prefix(int status, const char *fmt, ...)
{
    char old[sizeof last_message];
    memcpy(old, last_message, sizeof old);
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(last_message, sizeof last_message, fmt, ap);
    va_end(ap);
    if (k >= 0 && (size_t)k < sizeof last_message)
        memcpy(last_message + k, old, sizeof last_message - (size_t)k - 1);
    last_message[sizeof last_message - 1] = '\0';
    return status;
}

void tl_clear_error(void)
{
    last_message[0] = '\0';
}

unsigned tlearn_version_hex(void)
{
    return TLEARN_VERSION_HEX;
}

const char *tlearn_version_string(void)
{
    return TLEARN_VERSION_STRING;
}
