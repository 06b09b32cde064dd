/* test_store.c: the SQLite store on its own: a new database gets the
 * current schema, a foreign SQLite file is refused, log records come back in
 * order from any position (a record straddling it included) with their
 * tail counts, ids are claimed once, checkpoints replace each other, trims
 * are bounded, and a blob changed behind the store's back fails
 * verification and every read of it. */
#include "check_run.h"
#include "store/store.h"
#include "tame/core.h"

#include <check.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64], db[128];

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/tamed-store-XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(db, sizeof(db), "%s/t.db", dir);
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

static struct store *open_store(void)
{
    struct store *st;
    char why[256] = "";
    struct store_options o = {.busy_ms = 1000};
    int rc = store_open(db, &o, &st, why, sizeof(why));
    ck_assert_msg(rc == 0, "open: %s", why);
    return st;
}

/* A fresh store holding model "m", left inside an open transaction. */
static struct store *open_store_with_model(int64_t *id)
{
    struct store *st = open_store();
    ck_assert_int_eq(store_begin(st), 0);
    ck_assert_int_eq(store_model_create(st, "m", "params", 6, id), 0);
    return st;
}

static void sql(const char *text)
{
    sqlite3 *h;
    ck_assert_int_eq(sqlite3_open(db, &h), SQLITE_OK);
    char *err = NULL;
    ck_assert_msg(sqlite3_exec(h, text, NULL, NULL, &err) == SQLITE_OK, "%s: %s", text, err ? err : "");
    sqlite3_close(h);
}

static int64_t sql_int(const char *text)
{
    sqlite3 *h;
    sqlite3_stmt *s;
    ck_assert_int_eq(sqlite3_open(db, &h), SQLITE_OK);
    ck_assert_int_eq(sqlite3_prepare_v2(h, text, -1, &s, NULL), SQLITE_OK);
    ck_assert_int_eq(sqlite3_step(s), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    sqlite3_close(h);
    return v;
}

START_TEST(a_new_database_gets_the_schema_and_a_foreign_one_is_refused)
{
    store_close(open_store());
    ck_assert_int_eq(sql_int("PRAGMA user_version"), STORE_SCHEMA_VERSION);
    ck_assert_int_eq(sql_int("PRAGMA application_id"), 0x54414d45);
    ck_assert_int_eq(sql_int("PRAGMA page_size"), 65536);
    /* Someone else's SQLite file. */
    char other[160];
    snprintf(other, sizeof(other), "%s/other.db", dir);
    sqlite3 *h;
    ck_assert_int_eq(sqlite3_open(other, &h), SQLITE_OK);
    ck_assert_int_eq(sqlite3_exec(h, "CREATE TABLE mine(x)", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(h);
    struct store *st;
    char why[256] = "";
    struct store_options o = {0};
    ck_assert_int_eq(store_open(other, &o, &st, why, sizeof(why)), TAME_E_CORRUPT);
    ck_assert_ptr_nonnull(strstr(why, "not a tamed one"));
}
END_TEST

struct seen {
    uint64_t pos[16];
    uint32_t items[16];
    int kinds[16];
    float first_x[16];
    int n;
};

static int collect(void *ctx, const struct store_record *rec)
{
    struct seen *s = ctx;
    s->pos[s->n] = rec->pos;
    s->items[s->n] = rec->items;
    s->kinds[s->n] = (int)rec->kind;
    s->first_x[s->n] = rec->x_len ? ((const float *)rec->x)[0] : -1;
    s->n++;
    return 0;
}

START_TEST(log_records_come_back_in_order_from_any_position)
{
    int64_t id;
    struct store *st = open_store_with_model(&id);
    float x[3 * 2] = {1, 1, 2, 2, 3, 3};
    int32_t y[3] = {0, 1, 0};
    ck_assert_int_eq(store_log_append(st, id, 0, STORE_SAMPLES, 3, x, sizeof(x), y, sizeof(y)), 0);
    ck_assert_int_eq(store_log_append(st, id, 3, STORE_FLUSH, 1, NULL, 0, NULL, 0), 0);
    x[0] = 7;
    ck_assert_int_eq(store_log_append(st, id, 4, STORE_SAMPLES, 2, x, 4 * sizeof(float), y, 2 * sizeof(int32_t)), 0);
    ck_assert_int_eq(store_commit(st), 0);
    /* From position 2: the first record straddles it. */
    struct seen s = {0};
    ck_assert_int_eq(store_log_each(st, id, 2, collect, &s), 0);
    ck_assert_int_eq(s.n, 3);
    ck_assert_int_eq(s.pos[0], 0);
    ck_assert_int_eq(s.kinds[1], STORE_FLUSH);
    ck_assert(s.first_x[2] == 7.0f);
    uint64_t end, samples;
    ck_assert_int_eq(store_log_tail(st, id, 2, &end, &samples), 0);
    ck_assert_int_eq(end, 6);
    ck_assert_int_eq(samples, 1 + 2); /* one left of the first record, the last two */
    ck_assert_int_eq(store_log_tail(st, id, 6, &end, &samples), 0);
    ck_assert_int_eq(end, 6);
    ck_assert_int_eq(samples, 0);
    /* A duplicate position is refused (the log has one writer). */
    ck_assert_int_eq(store_begin(st), 0);
    ck_assert_int_eq(store_log_append(st, id, 4, STORE_FLUSH, 1, NULL, 0, NULL, 0), TAME_E_EXIST);
    store_rollback(st);
    store_close(st);
}
END_TEST

START_TEST(ids_are_claimed_once)
{
    int64_t id;
    struct store *st = open_store_with_model(&id);
    ck_assert_int_eq(store_id_claim(st, id, "a", 1, 0), 1);
    ck_assert_int_eq(store_id_claim(st, id, "b", 1, 1), 1);
    ck_assert_int_eq(store_id_claim(st, id, "a", 1, 2), 0);
    ck_assert_int_eq(store_commit(st), 0);
    ck_assert_int_eq(store_begin(st), 0);
    ck_assert_int_eq(store_id_claim(st, id, "a", 1, 9), 0); /* across transactions */
    ck_assert_int_eq(store_id_claim(st, id + 1, "a", 1, 9), 1); /* per model */
    ck_assert_int_eq(store_commit(st), 0);
    store_close(st);
}
END_TEST

static int count_records(void *ctx, const struct store_record *rec)
{
    (void)rec;
    ++*(int *)ctx;
    return 0;
}

START_TEST(checkpoints_replace_each_other_and_trims_are_bounded)
{
    int64_t id;
    struct store *st = open_store_with_model(&id);
    for (uint64_t p = 0; p < 20; p++) ck_assert_int_eq(store_log_append(st, id, p, STORE_FLUSH, 1, NULL, 0, NULL, 0), 0);
    for (int i = 0; i < 10; i++) {
        char key[8];
        snprintf(key, sizeof(key), "k%d", i);
        ck_assert_int_eq(store_id_claim(st, id, key, strlen(key), (uint64_t)i), 1);
    }
    ck_assert_int_eq(store_checkpoint_put(st, id, 5, "old", 3), 0);
    ck_assert_int_eq(store_checkpoint_put(st, id, 12, "newer", 5), 0);
    ck_assert_int_eq(store_commit(st), 0);
    uint64_t pos;
    void *b;
    size_t len;
    ck_assert_int_eq(store_checkpoint_get(st, id, &pos, &b, &len), 0);
    ck_assert_int_eq(pos, 12);
    ck_assert_uint_eq(len, 5);
    ck_assert_mem_eq(b, "newer", 5);
    free(b);
    ck_assert_int_eq(store_checkpoint_get(st, id + 1, &pos, &b, &len), TAME_E_NOTFOUND);
    /* A state of several 4 MiB pieces, the last one partial, written into
     * its zeroblob and rolled back with the transaction like any row. */
    size_t big_len = (9u << 20) + 12345;
    unsigned char *big = malloc(big_len);
    for (size_t i = 0; i < big_len; i++) big[i] = (unsigned char)(i * 2654435761u >> 13);
    ck_assert_int_eq(store_begin(st), 0);
    ck_assert_int_eq(store_checkpoint_put(st, id, 13, big, big_len), 0);
    ck_assert_int_eq(store_commit(st), 0);
    ck_assert_int_eq(store_checkpoint_get(st, id, &pos, &b, &len), 0);
    ck_assert_int_eq(pos, 13);
    ck_assert_uint_eq(len, big_len);
    ck_assert(memcmp(b, big, big_len) == 0);
    free(b);
    ck_assert_int_eq(store_begin(st), 0);
    ck_assert_int_eq(store_checkpoint_put(st, id, 14, "short", 5), 0);
    store_rollback(st);
    ck_assert_int_eq(store_checkpoint_get(st, id, &pos, &b, &len), 0);
    ck_assert_int_eq(pos, 13);
    ck_assert_uint_eq(len, big_len);
    free(b);
    free(big);
    /* The 12 records before position 12, 5 at a time. */
    bool done = false;
    int rounds = 0;
    while (!done) {
        ck_assert_int_eq(store_begin(st), 0);
        ck_assert_int_eq(store_trim(st, id, 12, 4, 5, &done), 0);
        ck_assert_int_eq(store_commit(st), 0);
        rounds++;
    }
    ck_assert_int_eq(rounds, 3); /* 5, 5, then 2 (done) */
    int n = 0;
    ck_assert_int_eq(store_log_each(st, id, 0, count_records, &n), 0);
    ck_assert_int_eq(n, 8);
    ck_assert_int_eq(sql_int("SELECT count(*) FROM sample_ids"), 6); /* ids of items 4..9 stay */
    store_close(st);
}
END_TEST

START_TEST(a_blob_changed_behind_the_store_fails_verification_and_reads)
{
    int64_t id;
    struct store *st = open_store_with_model(&id);
    ck_assert_int_eq(store_checkpoint_put(st, id, 3, "state", 5), 0);
    float x[2] = {1, 2};
    int32_t y[1] = {0};
    ck_assert_int_eq(store_log_append(st, id, 3, STORE_SAMPLES, 1, x, sizeof(x), y, sizeof(y)), 0);
    ck_assert_int_eq(store_commit(st), 0);
    char why[256] = "";
    ck_assert_int_eq(store_verify(st, why, sizeof(why)), 0);
    store_close(st);

    sql("UPDATE checkpoints SET state = x'7374617465ff'");
    struct store_options o = {0};
    ck_assert_int_eq(store_open(db, &o, &st, why, sizeof(why)), TAME_E_CORRUPT);
    ck_assert_ptr_nonnull(strstr(why, "checkpoint of model 1 at 3: checksum mismatch"));
    o.no_verify = true; /* reads check it too */
    ck_assert_int_eq(store_open(db, &o, &st, why, sizeof(why)), 0);
    uint64_t pos;
    void *b;
    size_t len;
    ck_assert_int_eq(store_checkpoint_get(st, id, &pos, &b, &len), TAME_E_CORRUPT);
    store_close(st);

    sql("UPDATE checkpoints SET state = x'7374617465'"); /* repaired */
    sql("UPDATE log SET y = x'01000000'");
    o.no_verify = false;
    ck_assert_int_eq(store_open(db, &o, &st, why, sizeof(why)), TAME_E_CORRUPT);
    ck_assert_ptr_nonnull(strstr(why, "checksum mismatch"));
}
END_TEST

static Suite *store_suite(void)
{
    Suite *s = suite_create("store");
    TCase *tc = tcase_create("store");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, a_new_database_gets_the_schema_and_a_foreign_one_is_refused);
    tcase_add_test(tc, log_records_come_back_in_order_from_any_position);
    tcase_add_test(tc, ids_are_claimed_once);
    tcase_add_test(tc, checkpoints_replace_each_other_and_trims_are_bounded);
    tcase_add_test(tc, a_blob_changed_behind_the_store_fails_verification_and_reads);
    suite_add_tcase(s, tc);
    return s;
}

int main(void) { return check_run(store_suite()); }
