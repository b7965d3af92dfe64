/* NumPy broadcasting loops shared by binary.c and scale.c (see broadcast.h). The plan is
 * walked in segments: a run of the innermost dimension, where each operand either steps
 * through contiguous floats or repeats one. The inner loops are OpenMP simd loops, so they
 * vectorise at -O2 too. */
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "broadcast.h"

int tl_bcast_shape(tl_shape a, tl_shape b, tl_shape *out)
{
    int r = a.rank > b.rank ? a.rank : b.rank;
    tl_shape o = {r, {{1, 1, 1, 1}}};
    for (int j = 0; j < r; j++) {
        int ja = j - (r - a.rank), jb = j - (r - b.rank);
        int da = ja >= 0 ? a.d[ja] : 1, db = jb >= 0 ? b.d[jb] : 1;
        if (da != db && da != 1 && db != 1)
            return -1;
        o.d[j] = da == 1 ? db : da;
    }
    *out = o;
    return 0;
}

void tl_bcast_plan(tl_bcast *p, size_t n, tl_shape out, const tl_shape in[2],
                   const int per_example[2])
{
    /* dims[0] is the batch, then the output's dimensions; strides per operand from the
     * right, 0 along a dimension of 1 (broadcast) */
    size_t size[TL_BC_DIMS], st[2][TL_BC_DIMS];
    int r = out.rank;
    size[0] = n;
    for (int j = 0; j < r; j++)
        size[1 + j] = (size_t)out.d[j];
    for (int k = 0; k < 2; k++) {
        size_t s = 1;
        for (int j = r - 1; j >= 0; j--) {
            int jk = j - (r - in[k].rank);
            size_t d = jk >= 0 ? (size_t)in[k].d[jk] : 1;
            st[k][1 + j] = d == 1 ? 0 : s;
            s *= d;
        }
        st[k][0] = per_example[k] ? s : 0;
        p->len[k] = per_example[k] ? n * s : s;
    }
    /* drop extents of 1, merge an inner dimension into the outer one when both operands
     * step through the pair as through one dimension */
    p->nd = 0;
    p->total = n * tl_shape_size(out);
    for (int j = 0; j <= r; j++) {
        if (size[j] == 1)
            continue;
        int q = p->nd - 1;
        if (q >= 0 && p->st[0][q] == st[0][j] * size[j] && p->st[1][q] == st[1][j] * size[j]) {
            p->size[q] *= size[j];
            p->st[0][q] = st[0][j];
            p->st[1][q] = st[1][j];
            continue;
        }
        p->size[p->nd] = size[j];
        p->st[0][p->nd] = st[0][j];
        p->st[1][p->nd] = st[1][j];
        p->nd++;
    }
    if (p->nd == 0 || n == 0) { /* one element (or none): any stride reads it */
        p->nd = 1;
        p->size[0] = p->total;
        p->st[0][0] = p->st[1][0] = 1;
    }
}

/* A walk over output positions [pos, hi): the current row's base offsets per operand and
 * the column inside the row. */
typedef struct walk {
    size_t idx[TL_BC_DIMS], off[2], col;
} walk;

static void walk_seek(const tl_bcast *p, walk *w, size_t pos)
{
    size_t inner = p->size[p->nd - 1], row = pos / inner;
    w->col = pos % inner;
    w->off[0] = w->off[1] = 0;
    for (int j = p->nd - 2; j >= 0; j--) {
        w->idx[j] = row % p->size[j];
        row /= p->size[j];
        w->off[0] += w->idx[j] * p->st[0][j];
        w->off[1] += w->idx[j] * p->st[1][j];
    }
}

static void walk_next_row(const tl_bcast *p, walk *w)
{
    w->col = 0;
    for (int j = p->nd - 2; j >= 0; j--) {
        w->off[0] += p->st[0][j];
        w->off[1] += p->st[1][j];
        if (++w->idx[j] < p->size[j])
            return;
        w->off[0] -= p->size[j] * p->st[0][j];
        w->off[1] -= p->size[j] * p->st[1][j];
        w->idx[j] = 0;
    }
}

/* o[i] = a[i*sa] OP b[i*sb] for sa, sb in {0, 1}: one simd loop per pattern. */
#define BC_SEGMENT(OP)                                                                       \
    do {                                                                                     \
        if (sa && sb) {                                                                      \
            _Pragma("omp simd") for (size_t i = 0; i < len; i++) o[i] = a[i] OP b[i];        \
        } else if (sa) {                                                                     \
            const float y = b[0];                                                            \
            _Pragma("omp simd") for (size_t i = 0; i < len; i++) o[i] = a[i] OP y;           \
        } else if (sb) {                                                                     \
            const float x = a[0];                                                            \
            _Pragma("omp simd") for (size_t i = 0; i < len; i++) o[i] = x OP b[i];           \
        } else {                                                                             \
            for (size_t i = 0; i < len; i++)                                                 \
                o[i] = a[0] OP b[0];                                                         \
        }                                                                                    \
    } while (0)

static void segment(int op, const float *a, size_t sa, const float *b, size_t sb, float *o,
                    size_t len)
{
    switch (op) {
    case TLEARN_BINARY_ADD: BC_SEGMENT(+); break;
    case TLEARN_BINARY_SUB: BC_SEGMENT(-); break;
    case TLEARN_BINARY_MUL: BC_SEGMENT(*); break;
    case TLEARN_BINARY_DIV: BC_SEGMENT(/); break;
    }
}

static void forward_range(const tl_bcast *p, int op, const float *a, const float *b,
                          float *out, size_t lo, size_t hi)
{
    size_t inner = p->size[p->nd - 1], ia = p->st[0][p->nd - 1], ib = p->st[1][p->nd - 1];
    walk w;
    walk_seek(p, &w, lo);
    for (size_t pos = lo; pos < hi; walk_next_row(p, &w)) {
        size_t len = inner - w.col < hi - pos ? inner - w.col : hi - pos;
        segment(op, a + w.off[0] + w.col * ia, ia, b + w.off[1] + w.col * ib, ib, out + pos,
                len);
        pos += len;
    }
}

void tl_bcast_forward(const tl_bcast *p, int op, const float *a, const float *b, float *out,
                      int threads)
{
    if (!p->total)
        return;
    int nt = tl_par_threads(threads, p->total);
    if (nt == 1) {
        forward_range(p, op, a, b, out, 0, p->total);
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        size_t lo = 0, hi = p->total;
#ifdef _OPENMP
        tl_par_range(p->total, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
#endif
        forward_range(p, op, a, b, out, lo, hi);
    }
}

/* The gradient of operand k at len positions before any reduction, as torch computes it:
 * add: d; sub: d, -d; mul: d*b, d*a; div: d/b, -d*((a/b)/b) with a/b read from the output.
 * Returns d itself when that is the gradient, else g. */
static const float *grad_segment(int op, int k, const float *d, const float *a, size_t sa,
                                 const float *b, size_t sb, const float *o, size_t len,
                                 float *g)
{
    if (op == TLEARN_BINARY_ADD || (op == TLEARN_BINARY_SUB && k == 0))
        return d;
    if (op == TLEARN_BINARY_SUB) {
#pragma omp simd
        for (size_t i = 0; i < len; i++)
            g[i] = -d[i];
    } else if (op == TLEARN_BINARY_MUL) {
        const float *v = k ? a : b;
        if (k ? sa : sb) {
#pragma omp simd
            for (size_t i = 0; i < len; i++)
                g[i] = d[i] * v[i];
        } else {
            const float c = v[0];
#pragma omp simd
            for (size_t i = 0; i < len; i++)
                g[i] = d[i] * c;
        }
    } else if (k == 0) { /* div, dividend */
        if (sb) {
#pragma omp simd
            for (size_t i = 0; i < len; i++)
                g[i] = d[i] / b[i];
        } else {
            const float c = b[0];
#pragma omp simd
            for (size_t i = 0; i < len; i++)
                g[i] = d[i] / c;
        }
    } else { /* div, divisor */
        if (sb) {
#pragma omp simd
            for (size_t i = 0; i < len; i++)
                g[i] = -d[i] * (o[i] / b[i]);
        } else {
            const float c = b[0];
#pragma omp simd
            for (size_t i = 0; i < len; i++)
                g[i] = -d[i] * (o[i] / c);
        }
    }
    return g;
}

/* Block of positions whose gradient is formed on the stack before it is reduced. */
#define BC_BLOCK 512

static void backward_range(const tl_bcast *p, int op, int k, const float *dout, const float *a,
                           const float *b, const float *out, float *dk, int overwrite,
                           size_t lo, size_t hi)
{
    size_t inner = p->size[p->nd - 1], ia = p->st[0][p->nd - 1], ib = p->st[1][p->nd - 1];
    size_t sk = p->st[k][p->nd - 1];
    float g[BC_BLOCK];
    walk w;
    walk_seek(p, &w, lo);
    for (size_t pos = lo; pos < hi; walk_next_row(p, &w)) {
        size_t len = inner - w.col < hi - pos ? inner - w.col : hi - pos;
        const float *pa = a + w.off[0] + w.col * ia, *pb = b + w.off[1] + w.col * ib;
        float *dst = dk + w.off[k] + w.col * sk;
        double acc = 0.0; /* a row summed into one element (sk == 0) */
        for (size_t j = 0; j < len; j += BC_BLOCK) {
            size_t m = len - j < BC_BLOCK ? len - j : BC_BLOCK;
            /* written in place when the gradient simply overwrites its own elements */
            float *gb = sk && overwrite ? dst + j : g;
            const float *gv = grad_segment(op, k, dout + pos + j, pa + j * ia, ia, pb + j * ib,
                                           ib, out ? out + pos + j : NULL, m, gb);
            if (sk == 0) {
                float part = 0.0f; /* a block in float, the row in double */
#pragma omp simd reduction(+ : part)
                for (size_t i = 0; i < m; i++)
                    part += gv[i];
                acc += part;
            } else if (overwrite) {
                if (gv != dst + j)
                    memcpy(dst + j, gv, sizeof(float) * m);
            } else {
                float *dj = dst + j;
#pragma omp simd
                for (size_t i = 0; i < m; i++)
                    dj[i] += gv[i];
            }
        }
        if (sk == 0)
            dst[0] += (float)acc;
        pos += len;
    }
}

void tl_bcast_backward(const tl_bcast *p, int op, int k, const float *dout, const float *a,
                       const float *b, const float *out, float *dk, int accum, int threads)
{
    if (!p->total)
        return;
    /* An operand as large as the output is written position by position; a broadcast one
     * is a sum, started from zero. */
    int full = p->len[k] == p->total;
    if (!full && !accum)
        memset(dk, 0, sizeof(float) * p->len[k]);
    int overwrite = full && !accum;
    /* Threads split positions when every position has its own element, else whole rows
     * when different rows never meet in one element (per-channel gating), else run alone. */
    int rows_apart = 1;
    for (int j = 0; j < p->nd - 1; j++)
        if (p->st[k][j] == 0)
            rows_apart = 0;
    int nt = tl_par_threads(threads, p->total);
    if (nt == 1 || (!full && !rows_apart)) {
        backward_range(p, op, k, dout, a, b, out, dk, overwrite, 0, p->total);
        return;
    }
    size_t inner = full ? 1 : p->size[p->nd - 1], units = p->total / inner;
#pragma omp parallel num_threads(nt)
    {
        size_t lo = 0, hi = units;
#ifdef _OPENMP
        tl_par_range(units, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
#endif
        backward_range(p, op, k, dout, a, b, out, dk, overwrite, lo * inner, hi * inner);
    }
}
