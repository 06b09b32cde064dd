/* fuzz_state.c: a learner checkpoint read back from a damaged database
 * loads or is refused (TAME_E_CORRUPT, TAME_E_VERSION, TAME_E_NOMEM), never
 * past its buffer; one that loads saves to the bytes it loads from again,
 * predicts and trains.  The last four bytes are replaced by the checksum of
 * the rest, so the fuzzer explores the reader behind the CRC; models larger
 * than a few MB are skipped (the same code, only slower to fuzz). */
#include "fuzz.h"
#include "tame/tame.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool small(const uint8_t *data, size_t size)
{
    struct tame_rbuf r;
    tame_rbuf_init(&r, data, size);
    tame_rbuf_u32(&r); /* magic */
    tame_rbuf_u32(&r); /* version */
    struct tame_params p;
    tame_params_load(&r, &p);
    if (r.err) return true; /* refused before anything is allocated */
    int widest = p.input_dim;
    for (int i = 0; i < p.n_hidden && i < TAME_MAX_HIDDEN; i++) widest = p.hidden[i] > widest ? p.hidden[i] : widest;
    return p.input_dim <= 64 && widest <= 64 && p.classes <= 64 && p.selector_capacity <= 4096 &&
           p.expert_capacity <= 4096 && p.batch_size <= 256 && p.window <= 4096 && p.finetune_epochs <= 20 &&
           p.max_experts <= 16 && p.attribution_batches <= 16;
}

static void save(const struct tame_learner *l, struct tame_wbuf *w)
{
    tame_wbuf_init(w);
    tame_learner_save(l, w);
    FUZZ_REQUIRE(!w->err, "save failed: %d", w->err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 8 || !small(data, size)) return 0;
    uint8_t *b = malloc(size);
    FUZZ_REQUIRE(b, "out of memory");
    memcpy(b, data, size);
    uint32_t crc = tame_crc32(0, b, size - 4);
    for (int i = 0; i < 4; i++) b[size - 4 + i] = (uint8_t)(crc >> (8 * i));
    struct tame_rbuf r;
    tame_rbuf_init(&r, b, size);
    struct tame_learner *l = NULL;
    int rc = tame_learner_load(&r, &l);
    FUZZ_REQUIRE(rc == 0 || rc == TAME_E_CORRUPT || rc == TAME_E_VERSION || rc == TAME_E_NOMEM, "load: %d", rc);
    free(b);
    if (rc < 0) return 0;

    /* What loads saves to itself: save, load, save again, same bytes. */
    struct tame_wbuf a, c;
    save(l, &a);
    struct tame_learner *again = NULL;
    tame_rbuf_init(&r, a.data, a.len);
    FUZZ_REQUIRE(tame_learner_load(&r, &again) == 0, "its own save refused");
    save(again, &c);
    FUZZ_REQUIRE(a.len == c.len && !memcmp(a.data, c.data, a.len), "save, load, save: %zu vs %zu bytes", a.len,
                 c.len);
    tame_learner_free(again);
    tame_wbuf_done(&a);
    tame_wbuf_done(&c);

    /* It predicts and trains. */
    struct tame_info info;
    tame_learner_info(l, &info);
    struct tame_snapshot *s = NULL;
    rc = tame_learner_snapshot(l, &s);
    FUZZ_REQUIRE(rc == 0 || rc == TAME_E_NOMEM, "snapshot: %d", rc);
    const struct tame_params *p = tame_learner_params(l);
    int dim = p->input_dim, classes = p->classes;
    float *x = calloc((size_t)dim * (size_t)p->batch_size, sizeof(float));
    int *y = calloc((size_t)p->batch_size, sizeof(int));
    float *probs = calloc(2 * (size_t)classes, sizeof(float));
    FUZZ_REQUIRE(x && y && probs, "out of memory");
    if (s && info.n_experts > 0) {
        struct tame_predict_work *w = NULL;
        struct tame_prediction out[2];
        if (tame_predict_work_new(s, 2, &w) == 0) {
            FUZZ_REQUIRE(tame_snapshot_predict(s, w, x, 2, -1, out, probs) == 0, "predict");
            FUZZ_REQUIRE(out[0].expert >= 0 && out[0].expert < info.n_experts, "routed to %d of %d", out[0].expert,
                         info.n_experts);
            FUZZ_REQUIRE(out[0].label >= 0 && out[0].label < classes, "label %d", out[0].label);
            tame_predict_work_free(w);
        }
    }
    tame_snapshot_free(s);
    rc = tame_learner_step(l, x, y, p->batch_size);
    FUZZ_REQUIRE(rc == 0 || rc == TAME_E_NONFINITE || rc == TAME_E_NOMEM, "step: %d", rc);
    free(x);
    free(y);
    free(probs);
    tame_learner_free(l);
    return 0;
}
