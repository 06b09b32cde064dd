/* test_eval.c: runs the real tame-eval binary on a small IDX data set that
 * the test writes itself (training files gzipped, test files plain), and
 * checks its JSON report: the keys scripts rely on, the experts found, the
 * detection delays, that TAME lands between the finetune and oracle
 * baselines, and that the stream sent to a real tamed (--url) learns what
 * it learns in-process. */
#include "check_run.h"
#include "harness.h"

#include <check.h>
#include <jansson.h>
#include <math.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

extern char **environ;

static char dir[256];
static const char *eval_bin;

#define SIDE 8
#define DIM (SIDE * SIDE)

static void put_be32(unsigned char *b, unsigned v)
{
    b[0] = v >> 24, b[1] = v >> 16, b[2] = v >> 8, b[3] = v;
}

/* Class c lights a fixed random third of the pixels; noise on top. */
static void write_set(const char *prefix, int n, unsigned seed, int gz)
{
    static unsigned char pattern[10][DIM];
    static int ready;
    if (!ready) {
        srand(4242);
        for (int c = 0; c < 10; c++)
            for (int j = 0; j < DIM; j++) pattern[c][j] = rand() % 3 == 0;
        ready = 1;
    }
    srand(seed);
    size_t img_len = 16 + (size_t)n * DIM, lab_len = 8 + (size_t)n;
    unsigned char *img = malloc(img_len), *lab = malloc(lab_len);
    put_be32(img, 0x803), put_be32(img + 4, n), put_be32(img + 8, SIDE), put_be32(img + 12, SIDE);
    put_be32(lab, 0x801), put_be32(lab + 4, n);
    for (int i = 0; i < n; i++) {
        int c = i % 10;
        lab[8 + i] = (unsigned char)c;
        for (int j = 0; j < DIM; j++) {
            int v = pattern[c][j] ? 200 : 30;
            v += rand() % 61 - 30;
            img[16 + (size_t)i * DIM + j] = (unsigned char)v;
        }
    }
    const char *names[2] = {"images-idx3-ubyte", "labels-idx1-ubyte"};
    unsigned char *bufs[2] = {img, lab};
    size_t lens[2] = {img_len, lab_len};
    for (int k = 0; k < 2; k++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/%s-%s%s", dir, prefix, names[k], gz ? ".gz" : "");
        if (gz) {
            gzFile f = gzopen(path, "wb");
            ck_assert_ptr_nonnull(f);
            ck_assert_int_eq(gzwrite(f, bufs[k], (unsigned)lens[k]), (int)lens[k]);
            gzclose(f);
        } else {
            FILE *f = fopen(path, "wb");
            ck_assert_ptr_nonnull(f);
            ck_assert_uint_eq(fwrite(bufs[k], 1, lens[k], f), lens[k]);
            fclose(f);
        }
    }
    free(img);
    free(lab);
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/tame-eval-test-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    write_set("train", 3000, 1, 1);
    write_set("t10k", 1000, 2, 0);
}

static void teardown(void)
{
    if (getenv("TAME_TEST_KEEP")) return; /* leave the data for a look */
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* Run tame-eval with the given extra arguments; returns its exit status and
 * the parsed report (NULL if none). */
static int run_eval(const char *const *extra, const char *name, json_t **ret)
{
    char json_path[512];
    snprintf(json_path, sizeof(json_path), "%s/%s.json", dir, name);
    const char *argv[64] = {eval_bin, "--data", dir, "--quiet", "--json", json_path, "--epochs", "10",
                            "--batch", "32", "--hidden", "32,32", "--selector-epochs", "30",
                            "--expert-sparsity", "0.8"};
    int argc = 16;
    for (int i = 0; extra[i]; i++) argv[argc++] = extra[i];
    argv[argc] = NULL;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    ck_assert_int_eq(posix_spawn(&pid, eval_bin, &fa, NULL, (char *const *)argv, environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    json_error_t err;
    *ret = json_load_file(json_path, 0, &err);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

static double num(json_t *obj, const char *path)
{
    json_t *v = obj;
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char *tok = strtok(buf, "."); tok; tok = strtok(NULL, ".")) {
        v = json_object_get(v, tok);
        ck_assert_msg(v != NULL, "missing key %s", path);
    }
    ck_assert_msg(json_is_number(v), "%s is not a number", path);
    return json_number_value(v);
}

START_TEST(split_stream_report_has_every_key_and_finds_every_task)
{
    json_t *r;
    const char *extra[] = {"--stream", "split", "--labels", "global", "--matrix", NULL};
    ck_assert_int_eq(run_eval(extra, "split", &r), 0);
    ck_assert_ptr_nonnull(r);
    const char *keys[] = {"stream", "experts", "events", "boundary_delays", "false_detections",
                          "accuracy", "matrix", "average_accuracy", "forgetting", "nonzero_params",
                          "train_seconds", "samples_per_second", "peak_rss_bytes"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        ck_assert_msg(json_object_get(r, keys[i]) != NULL, "missing %s", keys[i]);
    json_t *stream = json_object_get(r, "stream");
    ck_assert_str_eq(json_string_value(json_object_get(stream, "kind")), "split");
    ck_assert_str_eq(json_string_value(json_object_get(stream, "labels")), "global");
    ck_assert_int_eq((int)num(stream, "tasks"), 5);
    ck_assert_int_eq((int)num(stream, "epochs"), 10);
    ck_assert_int_eq((int)num(stream, "seed"), 1);
    ck_assert_uint_eq(json_array_size(json_object_get(stream, "boundaries")), 5);
    ck_assert_int_gt((int)num(stream, "batches"), 0);

    ck_assert_int_eq((int)num(r, "experts"), 5);
    json_t *delays = json_object_get(r, "boundary_delays");
    ck_assert_uint_eq(json_array_size(delays), 4);
    for (size_t i = 0; i < 4; i++) {
        json_t *d = json_array_get(delays, i);
        ck_assert_msg(json_is_integer(d), "boundary %zu missed", i + 1);
        ck_assert_int_le(json_integer_value(d), 5);
    }
    ck_assert_int_eq((int)num(r, "false_detections"), 0);
    /* Every event has the documented fields and a known kind. */
    json_t *ev;
    size_t i;
    int spawns = 0, selectors = 0;
    json_array_foreach(json_object_get(r, "events"), i, ev) {
        const char *kind = json_string_value(json_object_get(ev, "kind"));
        ck_assert_ptr_nonnull(kind);
        ck_assert(strstr("detect reuse spawn selector prune", kind) != NULL);
        ck_assert(json_is_integer(json_object_get(ev, "batch")));
        ck_assert(json_is_integer(json_object_get(ev, "from")));
        ck_assert(json_is_integer(json_object_get(ev, "to")));
        spawns += !strcmp(kind, "spawn");
        selectors += !strcmp(kind, "selector");
    }
    ck_assert_int_eq(spawns, 5);
    ck_assert_int_ge(selectors, 1);
    ck_assert_double_ge(num(r, "accuracy.local"), 0.9);
    ck_assert_double_ge(num(r, "accuracy.routing"), 0.9);
    ck_assert_uint_eq(json_array_size(json_object_get(json_object_get(r, "accuracy"), "per_task")), 5);
    json_t *matrix = json_object_get(r, "matrix");
    ck_assert_uint_eq(json_array_size(matrix), 5);
    ck_assert_uint_eq(json_array_size(json_array_get(matrix, 4)), 5);
    ck_assert_double_gt(num(r, "nonzero_params.experts"), 0);
    ck_assert_double_gt(num(r, "samples_per_second"), 0);
    ck_assert_double_gt(num(r, "peak_rss_bytes"), 0);
    json_decref(r);
}
END_TEST

START_TEST(tame_lands_between_finetune_and_oracle)
{
    json_t *t, *f, *o;
    const char *tame[] = {"--stream", "split", NULL};
    const char *fine[] = {"--stream", "split", "--baseline", "finetune", NULL};
    const char *orac[] = {"--stream", "split", "--baseline", "oracle", NULL};
    ck_assert_int_eq(run_eval(tame, "t", &t), 0);
    ck_assert_int_eq(run_eval(fine, "f", &f), 0);
    ck_assert_int_eq(run_eval(orac, "o", &o), 0);
    ck_assert_int_eq((int)num(f, "experts"), 1);
    ck_assert_int_eq((int)num(o, "experts"), 5);
    /* A single network forgets the earlier classes; TAME does not. */
    ck_assert_double_gt(num(t, "accuracy.global"), num(f, "accuracy.global") + 0.3);
    ck_assert_double_le(num(t, "accuracy.global"), num(o, "accuracy.global") + 0.02);
    ck_assert_double_eq(num(o, "accuracy.routing"), 1.0);
    json_decref(t);
    json_decref(f);
    json_decref(o);
}
END_TEST

START_TEST(recurring_stream_reuses_the_returning_task_expert)
{
    json_t *r;
    const char *extra[] = {"--stream", "recurring", "--sequence", "1,2,3,2,4", NULL};
    ck_assert_int_eq(run_eval(extra, "rec", &r), 0);
    ck_assert_int_eq((int)num(r, "experts"), 4);
    json_t *ev;
    size_t i;
    int reuses = 0;
    json_array_foreach(json_object_get(r, "events"), i, ev) {
        if (strcmp(json_string_value(json_object_get(ev, "kind")), "reuse")) continue;
        reuses++;
        ck_assert_int_eq((int)json_integer_value(json_object_get(ev, "to")), 1);
    }
    ck_assert_int_eq(reuses, 1);
    ck_assert_int_eq((int)num(r, "false_detections"), 0);
    json_decref(r);
}
END_TEST

/* The events that depend on the experts alone: detections, spawns, reuses
 * and expert prunes, as "kind batch from to" lines.  Selector retrains (and
 * the prunes of the selectors they make) come at other batches in the
 * daemon, which retrains in the background as the expert set changes. */
static char *expert_events(json_t *r)
{
    size_t cap = 4096, len = 0, i;
    char *out = calloc(1, cap);
    json_t *ev;
    json_array_foreach(json_object_get(r, "events"), i, ev) {
        const char *kind = json_string_value(json_object_get(ev, "kind"));
        int from = (int)json_integer_value(json_object_get(ev, "from"));
        if (!strcmp(kind, "selector") || (!strcmp(kind, "prune") && from < 0)) continue;
        if (len + 64 > cap) out = realloc(out, cap *= 2);
        len += (size_t)snprintf(out + len, cap - len, "%s %lld %d %lld\n", kind,
                                (long long)json_integer_value(json_object_get(ev, "batch")), from,
                                (long long)json_integer_value(json_object_get(ev, "to")));
    }
    return out;
}

START_TEST(a_stream_sent_to_tamed_learns_what_it_learns_in_process)
{
    /* The same split stream in-process and over HTTP to a real tamed, in
     * requests of 100 samples (not a multiple of the batch of 32, so
     * batches straddle requests), paced by --rate: the same experts, found
     * at the same batches, and the same accuracy. */
    struct daemon d;
    daemon_start(&d, NULL);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", d.port);
    json_t *in, *http;
    const char *local[] = {"--stream", "split", "--labels", "global", NULL};
    ck_assert_int_eq(run_eval(local, "inproc", &in), 0);
    const char *remote[] = {"--stream", "split", "--labels", "global", "--url", url,
                            "--request-size", "100", "--rate", "100000", NULL};
    ck_assert_int_eq(run_eval(remote, "http", &http), 0);
    ck_assert_ptr_nonnull(in);
    ck_assert_ptr_nonnull(http);
    ck_assert_int_eq((int)num(http, "experts"), 5);
    ck_assert_int_eq((int)num(http, "experts"), (int)num(in, "experts"));
    ck_assert_int_eq((int)num(http, "stream.batches"), (int)num(in, "stream.batches"));
    ck_assert_int_eq((int)num(http, "false_detections"), (int)num(in, "false_detections"));
    char *ea = expert_events(in), *eb = expert_events(http);
    ck_assert_msg(strstr(ea, "spawn") != NULL, "no spawn in-process");
    ck_assert_str_eq(eb, ea);
    ck_assert_double_eq_tol(num(http, "average_accuracy"), num(in, "average_accuracy"), 0.02);
    free(ea);
    free(eb);
    json_decref(in);
    json_decref(http);
    ck_assert_int_eq(daemon_stop(&d), 0);
    daemon_remove(&d);
}
END_TEST

START_TEST(bad_invocations_fail_with_a_message)
{
    json_t *r;
    const char *missing[] = {"--data", "/nonexistent/dir", NULL};
    ck_assert_int_eq(run_eval(missing, "bad1", &r), 2);
    ck_assert_ptr_null(r);
    const char *bad_stream[] = {"--stream", "sideways", NULL};
    ck_assert_int_eq(run_eval(bad_stream, "bad2", &r), 2);
    const char *bad_seq[] = {"--stream", "recurring", "--sequence", "1,9", NULL};
    ck_assert_int_eq(run_eval(bad_seq, "bad3", &r), 2);
    const char *bad_num[] = {"--epochs", "lots", NULL};
    ck_assert_int_eq(run_eval(bad_num, "bad4", &r), 2);
    const char *rate_alone[] = {"--rate", "1000", NULL}; /* paces --url streams only */
    ck_assert_int_eq(run_eval(rate_alone, "bad5", &r), 2);
}
END_TEST

int main(int argc, char **argv)
{
    eval_bin = argc > 1 ? argv[1] : getenv("TAME_EVAL");
    tamed_bin = argc > 2 ? argv[2] : getenv("TAMED");
    if (!eval_bin || !tamed_bin) {
        fprintf(stderr, "usage: test_eval PATH_TO_TAME_EVAL PATH_TO_TAMED\n");
        return 2;
    }
    Suite *s = suite_create("eval");
    TCase *tc = tcase_create("eval");
    tcase_set_timeout(tc, 300);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, split_stream_report_has_every_key_and_finds_every_task);
    tcase_add_test(tc, tame_lands_between_finetune_and_oracle);
    tcase_add_test(tc, recurring_stream_reuses_the_returning_task_expert);
    tcase_add_test(tc, a_stream_sent_to_tamed_learns_what_it_learns_in_process);
    tcase_add_test(tc, bad_invocations_fail_with_a_message);
    suite_add_tcase(s, tc);
    return check_run(s);
}
