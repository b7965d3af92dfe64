/* Memory of checkpoint load and save (issue 12, item 13): a ~100 MB model (MLP
 * 4096-4096-2048-10), saved as an inference file and as a full file with Adam state; each
 * measurement runs in its own forked child, which reports how much its resident set grew
 * (VmRSS) and its peak (VmHWM, reset through /proc/self/clear_refs just before the call)
 * over what it held before. Figures are memory, not time: the build machine is shared.
 *
 * Usage: checkpoint-memory [DIR]   (files go to DIR, default /tmp; removed at the end)
 * Exits 1 when a target is missed: load peak <= 1.3x the file, an inference file's
 * resident <= 1.1x, a save's peak <= 0.1x the model; the buffer calls (1.1) at most 1.1x
 * the file (their result, or the model they build). */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tlearn/tlearn.h>

enum { IN = 4096, H1 = 4096, H2 = 2048, OUT = 10, N = 4 };

/* A field of /proc/self/status in KiB, or -1. */
static long status_kib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long v = -1;
    size_t n = strlen(key);
    while (fgets(line, sizeof line, f))
        if (strncmp(line, key, n) == 0 && line[n] == ':') {
            v = strtol(line + n + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

/* Peak := current resident set (Linux >= 4.0); 0 on success. */
static int reset_peak(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (!f)
        return -1;
    int ok = fputs("5", f) >= 0;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static int check(int rc, const char *what)
{
    if (rc) {
        fprintf(stderr, "%s: %s\n", what, tlearn_errmsg());
        exit(2);
    }
    return rc;
}

static tlearn_model *build(void)
{
    tlearn_model *m;
    check(tlearn_model_create(&m, IN, 1, 1), "create");
    check(tlearn_model_add_dense(m, "fc1", H1), "fc1");
    check(tlearn_model_add_activation(m, "relu1", TLEARN_ACT_RELU, 0.0f), "relu1");
    check(tlearn_model_add_dense(m, "fc2", H2), "fc2");
    check(tlearn_model_add_activation(m, "relu2", TLEARN_ACT_RELU, 0.0f), "relu2");
    check(tlearn_model_add_dense(m, "fc3", OUT), "fc3");
    return m;
}

static float xs[N * IN];
static int32_t ys[N];

static void batch(void)
{
    for (size_t i = 0; i < sizeof xs / sizeof xs[0]; i++)
        xs[i] = (float)((i * 2654435761u) % 1000) / 1000.0f;
    for (int i = 0; i < N; i++)
        ys[i] = i % OUT;
}

typedef struct result {
    long grew, peak; /* KiB over the start */
} result;

enum { LOAD, LOAD_PREDICT, LOAD_TRAIN, SAVE_INF, SAVE_FULL, SAVE_FULL_Z1, SAVE_BUF_INF,
       SAVE_BUF_Z1, LOAD_BUF, EXPORT_ST_BUF };

/* In the child: set up, measure one call, report through the pipe. */
static result child(int what, const char *inf, const char *full, const char *out_path)
{
    tlearn_model *m = NULL;
    tlearn_optim *o = NULL;
    if (what == SAVE_INF || what == LOAD_PREDICT || what == LOAD_TRAIN ||
        what == SAVE_BUF_INF || what == EXPORT_ST_BUF)
        check(tlearn_model_load(&m, NULL, inf), "load");
    if (what == SAVE_FULL || what == SAVE_FULL_Z1 || what == SAVE_BUF_Z1)
        check(tlearn_model_load(&m, &o, full), "load");
    void *buf = NULL; /* the bytes a buffer call returns, or loads from */
    size_t len = 0;
    if (what == LOAD_BUF) { /* the inference file's bytes, as a host would hold them */
        tlearn_model *t;
        check(tlearn_model_load(&t, NULL, inf), "load");
        check(tlearn_model_save_buffer(t, NULL, TLEARN_SAVE_INFERENCE, &buf, &len), "save");
        tlearn_model_destroy(&t);
    }
    if (what == LOAD_TRAIN)
        check(tlearn_optim_create(&o, TLEARN_ADAM), "optim");
    long rss0 = status_kib("VmRSS");
    if (reset_peak())
        return (result){-1, -1};
    static float out[N * OUT];
    switch (what) {
    case LOAD:
        check(tlearn_model_load(&m, NULL, out_path), "load");
        break;
    case LOAD_PREDICT:
        check(tlearn_model_predict(m, xs, N, out, N * OUT), "predict");
        break;
    case LOAD_TRAIN:
        check(tlearn_model_train_step(m, o, xs, ys, N, NULL), "train");
        break;
    case SAVE_INF:
        check(tlearn_model_save(m, NULL, out_path, TLEARN_SAVE_INFERENCE), "save");
        break;
    case SAVE_FULL:
        check(tlearn_model_save(m, o, out_path, TLEARN_SAVE_FULL), "save");
        break;
    case SAVE_FULL_Z1:
        check(tlearn_model_save(m, o, out_path, TLEARN_SAVE_FULL | TLEARN_SAVE_COMPRESS(1)),
              "save");
        break;
    case SAVE_BUF_INF:
        check(tlearn_model_save_buffer(m, NULL, TLEARN_SAVE_INFERENCE, &buf, &len), "save");
        break;
    case SAVE_BUF_Z1:
        check(tlearn_model_save_buffer(m, o, TLEARN_SAVE_FULL | TLEARN_SAVE_COMPRESS(1), &buf,
                                       &len), "save");
        break;
    case LOAD_BUF:
        check(tlearn_model_load_buffer(&m, NULL, buf, len), "load");
        break;
    case EXPORT_ST_BUF:
        check(tlearn_model_export_safetensors_buffer(m, &buf, &len), "export");
        break;
    }
    /* resident with the returned buffer still held: it is the call's result */
    result r = {status_kib("VmRSS") - rss0, status_kib("VmHWM") - rss0};
    if (what == SAVE_BUF_Z1)
        fprintf(stderr, "# save_buffer full zlib 1: %.1f MiB of bytes\n", len / 1048576.0);
    tlearn_free(buf);
    tlearn_model_destroy(&m);
    tlearn_optim_destroy(&o);
    return r;
}

static result measure(int what, const char *inf, const char *full, const char *arg)
{
    int fd[2];
    result r = {-1, -1};
    if (pipe(fd))
        return r;
    pid_t pid = fork();
    if (pid == 0) {
        close(fd[0]);
        r = child(what, inf, full, arg);
        ssize_t k = write(fd[1], &r, sizeof r);
        _exit(k == (ssize_t)sizeof r ? 0 : 1);
    }
    close(fd[1]);
    if (pid < 0 || read(fd[0], &r, sizeof r) != (ssize_t)sizeof r)
        r = (result){-1, -1};
    close(fd[0]);
    int st;
    if (pid > 0)
        waitpid(pid, &st, 0);
    return r;
}

static long file_kib(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)(st.st_size / 1024) : -1;
}

static int failed;

static void row(const char *what, result r, long ref_kib, const char *ref, double peak_max,
                double grew_max)
{
    double pk = (double)r.peak / (double)ref_kib, gr = (double)r.grew / (double)ref_kib;
    int bad = r.peak < 0 || (peak_max > 0 && pk > peak_max) || (grew_max > 0 && gr > grew_max);
    failed |= bad;
    printf("%-34s peak +%7.1f MiB (%.2fx %s)  resident +%7.1f MiB (%.2fx)%s\n", what,
           r.peak / 1024.0, pk, ref, r.grew / 1024.0, gr, bad ? "  MISSED TARGET" : "");
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : "/tmp";
    char inf[4096], full[4096], out[4096];
    snprintf(inf, sizeof inf, "%s/ckmem-%d-inf.tlck", dir, (int)getpid());
    snprintf(full, sizeof full, "%s/ckmem-%d-full.tlck", dir, (int)getpid());
    snprintf(out, sizeof out, "%s/ckmem-%d-out.tlck", dir, (int)getpid());
    batch();
    /* The files, written by a child so that the parent stays small. */
    pid_t pid = fork();
    if (pid == 0) {
        tlearn_model *m = build();
        tlearn_optim *o;
        check(tlearn_model_save(m, NULL, inf, TLEARN_SAVE_INFERENCE), "save");
        check(tlearn_optim_create(&o, TLEARN_ADAM), "optim");
        check(tlearn_model_train_step(m, o, xs, ys, N, NULL), "train");
        check(tlearn_model_save(m, o, full, TLEARN_SAVE_FULL), "save");
        _exit(0);
    }
    int st;
    if (pid < 0 || waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
        fprintf(stderr, "checkpoint-memory: could not write the files\n");
        return 2;
    }
    long fi = file_kib(inf), ff = file_kib(full);
    printf("# model MLP %d-%d-%d-%d: inference file %.1f MiB, full file (Adam) %.1f MiB\n", IN,
           H1, H2, OUT, fi / 1024.0, ff / 1024.0);
    printf("# libtlearn %s\n", tlearn_version_string());
    row("load inference file", measure(LOAD, inf, full, inf), fi, "file", 1.3, 1.1);
    row("load full file", measure(LOAD, inf, full, full), ff, "file", 1.3, 1.1);
    row("predict after inference load", measure(LOAD_PREDICT, inf, full, NULL), fi, "model", 0,
        0);
    row("first Adam step after load", measure(LOAD_TRAIN, inf, full, NULL), fi, "model", 0, 0);
    row("save inference", measure(SAVE_INF, inf, full, out), fi, "model", 0.1, 0.1);
    row("save full (Adam state)", measure(SAVE_FULL, inf, full, out), ff, "file", 0.1, 0.1);
    row("save full, zlib level 1", measure(SAVE_FULL_Z1, inf, full, out), ff, "file", 0.1, 0.1);
    /* In memory (1.1): the result is one copy of the bytes, and nothing else. */
    row("save_buffer inference", measure(SAVE_BUF_INF, inf, full, NULL), fi, "file", 1.1, 1.1);
    row("save_buffer full, zlib level 1", measure(SAVE_BUF_Z1, inf, full, NULL), ff, "file",
        1.1, 1.1);
    row("load_buffer inference bytes", measure(LOAD_BUF, inf, full, NULL), fi, "file", 1.1,
        1.1);
    row("export_safetensors_buffer", measure(EXPORT_ST_BUF, inf, full, NULL), fi, "file", 1.1,
        1.1);
    unlink(inf);
    unlink(full);
    unlink(out);
    return failed;
}
