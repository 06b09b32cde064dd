/* store.c: the schema, its migrations, and every statement tamed runs.
 *
 * Schema (PRAGMA user_version = STORE_SCHEMA_VERSION, application_id 'TAME'):
 *
 *   models(id INTEGER PRIMARY KEY, name TEXT UNIQUE, params BLOB, crc, created_at)
 *       params: "TPRM", a version word, then tame_params_save (tame.h).
 *   log(model_id, pos, items, kind, x BLOB, y BLOB, crc), UNIQUE(model_id, pos)
 *       The sample log: every acknowledged request, in acknowledged order.  A
 *       model's input is a sequence of items; a record holds `items` of them
 *       starting at item `pos`.  kind 0 = samples: x holds items x input_dim
 *       floats (encoded), y items int32 little-endian; kind 1 = flush (train the
 *       partial batch) and kind 2 = selector (retrain it now) are one item
 *       with no x or y.  crc = CRC-32 of the kind byte, x, then y.  (x is
 *       opaque here: serve/logcodec.h writes it, float32 or a palette.)
 *   checkpoints(model_id PRIMARY KEY, pos, crc, created_at, state BLOB)
 *       One per model: the model after consuming items [0, pos), replaced
 *       in one transaction (layout: serve/serve.c, "checkpoint blobs").
 *       state is the last column so it can be written in pieces into a
 *       zeroblob (store_checkpoint_put); [v3; before, it came third].
 *       Records wholly before pos are garbage from then on; they are
 *       deleted a few at a time in later transactions (store_trim), so a
 *       checkpoint never waits for a large delete.
 *   events(model_id, seq, event BLOB, crc), PRIMARY KEY(model_id, seq)
 *       The model's events up to its checkpoint (the rest are replayed);
 *       each blob is tame_event_save.
 *   sample_ids(model_id, id TEXT, pos), PRIMARY KEY(model_id, id)   [v2]
 *       Client sample ids, so a retried request is not trained twice.
 *
 * Version 1 had no sample_ids; migration 2 adds it.  Migration 3 moves
 * checkpoints.state to the end of the row.
 */
#include "store.h"

#include "tame/core.h"

#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define APPLICATION_ID 0x54414d45 /* "TAME" */

enum stmt {
    S_BEGIN, S_COMMIT, S_ROLLBACK, S_SAVEPOINT, S_RELEASE, S_ROLLBACK_TO,
    S_MODEL_INSERT, S_MODEL_DELETE, S_LOG_DELETE_MODEL, S_CKPT_DELETE_MODEL, S_EVENTS_DELETE_MODEL,
    S_IDS_DELETE_MODEL, S_MODELS,
    S_LOG_INSERT, S_ID_INSERT, S_LOG_EACH, S_LOG_TAIL,
    S_CKPT_PUT, S_LOG_TRIM, S_IDS_TRIM, S_CKPT_GET, S_EVENT_PUT, S_EVENTS_EACH, S_PROBE,
    N_STMT
};

static const char *const stmt_sql[N_STMT] = {
    [S_BEGIN] = "BEGIN IMMEDIATE",
    [S_COMMIT] = "COMMIT",
    [S_ROLLBACK] = "ROLLBACK",
    [S_SAVEPOINT] = "SAVEPOINT request",
    [S_RELEASE] = "RELEASE request",
    [S_ROLLBACK_TO] = "ROLLBACK TO request",
    [S_MODEL_INSERT] = "INSERT INTO models(name, params, crc, created_at) VALUES (?, ?, ?, unixepoch())",
    [S_MODEL_DELETE] = "DELETE FROM models WHERE id = ?",
    [S_LOG_DELETE_MODEL] = "DELETE FROM log WHERE model_id = ?",
    [S_CKPT_DELETE_MODEL] = "DELETE FROM checkpoints WHERE model_id = ?",
    [S_EVENTS_DELETE_MODEL] = "DELETE FROM events WHERE model_id = ?",
    [S_IDS_DELETE_MODEL] = "DELETE FROM sample_ids WHERE model_id = ?",
    [S_MODELS] = "SELECT id, name, params, crc FROM models ORDER BY id",
    [S_LOG_INSERT] = "INSERT INTO log(model_id, pos, items, kind, x, y, crc) VALUES (?, ?, ?, ?, ?, ?, ?)",
    [S_ID_INSERT] = "INSERT OR IGNORE INTO sample_ids(model_id, id, pos) VALUES (?, ?, ?)",
    [S_LOG_EACH] = "SELECT pos, items, kind, x, y, crc FROM log WHERE model_id = ? AND pos + items > ? "
                   "ORDER BY pos",
    [S_LOG_TAIL] = "SELECT max(pos + items), sum(CASE kind WHEN 0 THEN items - max(? - pos, 0) ELSE 0 END) "
                   "FROM log WHERE model_id = ? AND pos + items > ?",
    [S_CKPT_PUT] = "INSERT OR REPLACE INTO checkpoints(model_id, pos, crc, created_at, state) "
                   "VALUES (?, ?, ?, unixepoch(), zeroblob(?))",
    [S_LOG_TRIM] = "DELETE FROM log WHERE rowid IN (SELECT rowid FROM log WHERE model_id = ? AND pos + items <= ? "
                   "ORDER BY pos LIMIT ?)",
    [S_IDS_TRIM] = "DELETE FROM sample_ids WHERE model_id = ?1 AND id IN (SELECT id FROM sample_ids WHERE model_id = ?1 "
                   "AND pos < ?2 LIMIT ?3)",
    [S_CKPT_GET] = "SELECT pos, state, crc FROM checkpoints WHERE model_id = ?",
    [S_EVENT_PUT] = "INSERT OR REPLACE INTO events(model_id, seq, event, crc) VALUES (?, ?, ?, ?)",
    [S_EVENTS_EACH] = "SELECT seq, event, crc FROM events WHERE model_id = ? ORDER BY seq",
    [S_PROBE] = "UPDATE meta SET value = value WHERE key = 'schema'",
};

/* Forward migrations: migration[v - 1] takes user_version v - 1 to v. */
static const char *const migration[STORE_SCHEMA_VERSION] = {
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "INSERT INTO meta VALUES ('schema', 'tamed');"
    "CREATE TABLE models(id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, params BLOB NOT NULL,"
    "  crc INTEGER NOT NULL, created_at INTEGER NOT NULL);"
    "CREATE TABLE log(model_id INTEGER NOT NULL, pos INTEGER NOT NULL, items INTEGER NOT NULL,"
    "  kind INTEGER NOT NULL, x BLOB, y BLOB, crc INTEGER NOT NULL, UNIQUE(model_id, pos));"
    "CREATE TABLE checkpoints(model_id INTEGER PRIMARY KEY, pos INTEGER NOT NULL, state BLOB NOT NULL,"
    "  crc INTEGER NOT NULL, created_at INTEGER NOT NULL);"
    "CREATE TABLE events(model_id INTEGER NOT NULL, seq INTEGER NOT NULL, event BLOB NOT NULL,"
    "  crc INTEGER NOT NULL, PRIMARY KEY(model_id, seq)) WITHOUT ROWID;",
    "CREATE TABLE sample_ids(model_id INTEGER NOT NULL, id TEXT NOT NULL, pos INTEGER NOT NULL,"
    "  PRIMARY KEY(model_id, id)) WITHOUT ROWID;"
    "CREATE INDEX sample_ids_pos ON sample_ids(model_id, pos);",
    "CREATE TABLE checkpoints_v3(model_id INTEGER PRIMARY KEY, pos INTEGER NOT NULL, crc INTEGER NOT NULL,"
    "  created_at INTEGER NOT NULL, state BLOB NOT NULL);"
    "INSERT INTO checkpoints_v3(model_id, pos, crc, created_at, state)"
    "  SELECT model_id, pos, crc, created_at, state FROM checkpoints;"
    "DROP TABLE checkpoints;"
    "ALTER TABLE checkpoints_v3 RENAME TO checkpoints;",
};

struct store {
    sqlite3 *db;
    bool readonly;       /* opened for reading */
    bool file_readonly;  /* opened for writing, but the file is read-only */
    int wal_frames;      /* frames in the WAL after the last commit (manual_wal) */
    char *path;
    struct store_options opts;
    sqlite3_stmt *st[N_STMT];
};

static int open_db(const char *path, const struct store_options *o, bool verify, struct store **ret, char *why,
                   size_t why_len);

static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    (void)db;
    (void)name;
    ((struct store *)arg)->wal_frames = frames;
    return SQLITE_OK;
}

/* The one translation of SQLite's result codes. */
static int store_code(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE: return 0;
    case SQLITE_NOMEM: return TAME_E_NOMEM;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
    case SQLITE_FORMAT: return TAME_E_CORRUPT;
    case SQLITE_CONSTRAINT: return TAME_E_EXIST;
    case SQLITE_FULL:
    case SQLITE_READONLY:
    case SQLITE_IOERR:
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CANTOPEN:
    case SQLITE_PROTOCOL:
    case SQLITE_PERM: return TAME_E_UNAVAIL;
    case SQLITE_TOOBIG: return TAME_E_LIMIT;
    default: return TAME_E_IO;
    }
}

const char *store_errmsg(const struct store *st) { return st && st->db ? sqlite3_errmsg(st->db) : "database closed"; }

static sqlite3_stmt *stmt(struct store *st, enum stmt k)
{
    if (!st->db) return NULL;
    if (!st->st[k] && sqlite3_prepare_v3(st->db, stmt_sql[k], -1, SQLITE_PREPARE_PERSISTENT, &st->st[k], NULL) !=
                          SQLITE_OK)
        return NULL;
    sqlite3_reset(st->st[k]);
    sqlite3_clear_bindings(st->st[k]);
    return st->st[k];
}

/* Run a statement that returns no rows. */
static int run(struct store *st, sqlite3_stmt *s)
{
    if (!st->db) return TAME_E_UNAVAIL;
    if (!s) return store_code(sqlite3_errcode(st->db)) ? store_code(sqlite3_errcode(st->db)) : TAME_E_IO;
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? 0 : store_code(rc);
}

static int exec(struct store *st, const char *sql)
{
    return store_code(sqlite3_exec(st->db, sql, NULL, NULL, NULL));
}

static int64_t pragma_int(struct store *st, const char *sql, int *rc)
{
    sqlite3_stmt *s;
    int64_t v = 0;
    *rc = store_code(sqlite3_prepare_v2(st->db, sql, -1, &s, NULL));
    if (*rc) return 0;
    int r = sqlite3_step(s);
    if (r == SQLITE_ROW) v = sqlite3_column_int64(s, 0);
    else *rc = store_code(r) ? store_code(r) : TAME_E_IO;
    sqlite3_finalize(s);
    return v;
}

static uint32_t blob_crc(uint32_t crc, const void *p, size_t n) { return n ? tame_crc32(crc, p, n) : crc; }

static uint32_t record_crc(int kind, const void *x, size_t x_len, const void *y, size_t y_len)
{
    uint8_t k = (uint8_t)kind;
    return blob_crc(blob_crc(tame_crc32(0, &k, 1), x, x_len), y, y_len);
}

static int schema_step(struct store *st, int to)
{
    char sql[64];
    int rc = exec(st, "BEGIN IMMEDIATE");
    if (rc) return rc;
    rc = exec(st, migration[to - 1]);
    snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", to);
    if (!rc) rc = exec(st, sql);
    if (!rc && to == 1) {
        snprintf(sql, sizeof(sql), "PRAGMA application_id = %d", APPLICATION_ID);
        rc = exec(st, sql);
    }
    if (!rc) rc = exec(st, "COMMIT");
    if (rc) exec(st, "ROLLBACK");
    return rc;
}

int store_open(const char *path, const struct store_options *o, struct store **ret, char *why, size_t why_len)
{
    return open_db(path, o, !o->no_verify, ret, why, why_len);
}

static int open_db(const char *path, const struct store_options *o, bool verify, struct store **ret, char *why,
                   size_t why_len)
{
    struct store *st = calloc(1, sizeof(*st));
    if (!st) return TAME_E_NOMEM;
    st->readonly = o->readonly;
    st->opts = *o;
    st->path = strdup(path);
    if (!st->path) {
        free(st);
        return TAME_E_NOMEM;
    }
    int flags = o->readonly ? SQLITE_OPEN_READONLY : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    int rc = store_code(sqlite3_open_v2(path, &st->db, flags | SQLITE_OPEN_NOMUTEX, NULL));
    if (rc) {
        snprintf(why, why_len, "cannot open %s: %s", path, st->db ? sqlite3_errmsg(st->db) : "out of memory");
        goto fail;
    }
    sqlite3_extended_result_codes(st->db, 1);
    /* Only store_close folds the WAL back, and only on a healthy writer: a
     * database refused below is left exactly as it was found. */
    sqlite3_db_config(st->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
    sqlite3_busy_timeout(st->db, o->busy_ms > 0 ? o->busy_ms : 5000);

    /* Read what the file is before writing anything to it. */
    int64_t version = pragma_int(st, "PRAGMA user_version", &rc);
    int64_t app = rc ? 0 : pragma_int(st, "PRAGMA application_id", &rc);
    int64_t tables = rc ? 0 : pragma_int(st, "SELECT count(*) FROM sqlite_schema", &rc);
    if (rc) {
        snprintf(why, why_len, "%s is not a readable SQLite database: %s", path, sqlite3_errmsg(st->db));
        goto fail;
    }
    if (tables > 0 && app != APPLICATION_ID) {
        snprintf(why, why_len, "%s is a SQLite database but not a tamed one (application_id %lld)", path,
                 (long long)app);
        rc = TAME_E_CORRUPT;
        goto fail;
    }
    if (version > STORE_SCHEMA_VERSION) {
        snprintf(why, why_len,
                 "%s has schema version %lld, newer than this tamed understands (%d): use a newer tamed", path,
                 (long long)version, STORE_SCHEMA_VERSION);
        rc = TAME_E_VERSION;
        goto fail;
    }
    if (o->readonly) {
        if (version < STORE_SCHEMA_VERSION) {
            snprintf(why, why_len, "%s has schema version %lld; open it read-write once to migrate it", path,
                     (long long)version);
            rc = TAME_E_VERSION;
            goto fail;
        }
        *ret = st;
        return 0;
    }
    if (tables > 0 && verify) {
        rc = store_verify(st, why, why_len);
        if (rc) goto fail;
    }
    /* A file we may not write (permissions, a read-only mount) is served
     * for reading: predictions work, writes fail with TAME_E_UNAVAIL until
     * store_reopen finds it writable. */
    if (sqlite3_db_readonly(st->db, "main") == 1) {
        if (version < STORE_SCHEMA_VERSION) {
            snprintf(why, why_len, "%s is read-only and has schema version %lld; it must be writable once to migrate",
                     path, (long long)version);
            rc = TAME_E_UNAVAIL;
            goto fail;
        }
        st->file_readonly = true;
        *ret = st;
        return 0;
    }
    /* Large pages: a request's samples and a learner's state are blobs of
     * hundreds of kilobytes to megabytes, written as a chain of pages; at
     * 64 KiB a 128-sample request is 7 WAL frames instead of 100.  Only a
     * new database takes it (before WAL mode writes its first page). */
    if (tables == 0 && version == 0) rc = exec(st, "PRAGMA page_size = 65536");
    if (!rc) rc = exec(st, "PRAGMA journal_mode = WAL");
    if (!rc) rc = exec(st, o->sync == STORE_SYNC_FULL ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL");
    /* Each request commits inside its own savepoint, whose statement journal
     * keeps the pages it changes; SQLite spills a journal past 64 KiB -- one
     * of our pages -- to a temporary file in /var/tmp, created and unlinked on
     * every commit (and impossible on a read-only container filesystem).  In
     * memory it is a few pages per request, freed at commit. */
    if (!rc) rc = exec(st, "PRAGMA temp_store = MEMORY");
    int64_t page = rc ? 0 : pragma_int(st, "PRAGMA page_size", &rc);
    /* Fold the WAL back every 16 MiB, so it stays small; or leave it to a
     * thread of the caller's (store_wal_fold), off the commit path, told by
     * store_wal_frames when there is enough to fold. */
    if (!rc && o->manual_wal) sqlite3_wal_hook(st->db, wal_hook, st);
    else if (!rc) sqlite3_wal_autocheckpoint(st->db, (int)((16 << 20) / page));
    if (!rc && o->max_bytes > 0) {
        char sql[64];
        snprintf(sql, sizeof(sql), "PRAGMA max_page_count = %lld", (long long)(o->max_bytes / page));
        rc = exec(st, sql);
    }
    if (rc) {
        snprintf(why, why_len, "cannot configure %s: %s", path, sqlite3_errmsg(st->db));
        goto fail;
    }
    for (int v = (int)version + 1; v <= STORE_SCHEMA_VERSION; v++) {
        rc = schema_step(st, v);
        if (rc) {
            snprintf(why, why_len, "cannot migrate %s to schema version %d: %s", path, v, sqlite3_errmsg(st->db));
            goto fail;
        }
    }
    *ret = st;
    return 0;
fail:
    sqlite3_close_v2(st->db);
    free(st->path);
    free(st);
    return rc ? rc : TAME_E_IO;
}

int store_wal_frames(const struct store *st) { return st->wal_frames; }

bool store_writable(const struct store *st) { return st->db && !st->readonly && !st->file_readonly; }

int store_reopen(struct store *st)
{
    /* Close first: SQLite shares one WAL index per file within a process,
     * and the read-only connection's would make the new one read-only too. */
    for (int k = 0; k < N_STMT; k++) sqlite3_finalize(st->st[k]), st->st[k] = NULL;
    sqlite3_close_v2(st->db);
    st->db = NULL;
    /* SQLite creates the -wal and -shm with the database file's mode; made
     * while it was read-only, they would keep it read-only after it is
     * writable again.  Give them its mode now (they are ours). */
    struct stat db;
    if (stat(st->path, &db) == 0) {
        for (int k = 0; k < 2; k++) {
            char side[4096];
            struct stat sb;
            snprintf(side, sizeof(side), "%s%s", st->path, k ? "-shm" : "-wal");
            if (stat(side, &sb) == 0 && (sb.st_mode & 0777) != (db.st_mode & 0777)) chmod(side, db.st_mode & 0777);
        }
    }
    struct store *fresh;
    char why[256];
    int rc = open_db(st->path, &st->opts, false, &fresh, why, sizeof(why));
    if (rc) return rc; /* no connection until a later attempt succeeds */
    st->db = fresh->db;
    st->file_readonly = fresh->file_readonly;
    if (st->opts.manual_wal) sqlite3_wal_hook(st->db, wal_hook, st); /* it pointed at fresh */
    free(fresh->path);
    free(fresh);
    return store_writable(st) ? 0 : TAME_E_UNAVAIL;
}

void store_close(struct store *st)
{
    if (!st) return;
    for (int k = 0; k < N_STMT; k++) sqlite3_finalize(st->st[k]);
    if (store_writable(st)) sqlite3_wal_checkpoint_v2(st->db, NULL, SQLITE_CHECKPOINT_TRUNCATE, NULL, NULL);
    sqlite3_close_v2(st->db);
    free(st->path);
    free(st);
}

/* ---- verification ---- */

static int verify_table(struct store *st, const char *sql, const char *what, bool log_records, char *why,
                        size_t why_len)
{
    sqlite3_stmt *s;
    int rc = store_code(sqlite3_prepare_v2(st->db, sql, -1, &s, NULL));
    if (rc) {
        snprintf(why, why_len, "cannot read %s: %s", what, sqlite3_errmsg(st->db));
        return rc;
    }
    /* Columns: model, key, crc, then the blob (or, for log records, kind, x
     * and y), checked the way they were written. */
    int r;
    while ((r = sqlite3_step(s)) == SQLITE_ROW) {
        uint32_t crc = log_records ? record_crc(sqlite3_column_int(s, 3), sqlite3_column_blob(s, 4),
                                                (size_t)sqlite3_column_bytes(s, 4), sqlite3_column_blob(s, 5),
                                                (size_t)sqlite3_column_bytes(s, 5))
                                   : blob_crc(0, sqlite3_column_blob(s, 3), (size_t)sqlite3_column_bytes(s, 3));
        if (crc != (uint32_t)sqlite3_column_int64(s, 2)) {
            snprintf(why, why_len, "%s of model %lld at %lld: checksum mismatch", what,
                     (long long)sqlite3_column_int64(s, 0), (long long)sqlite3_column_int64(s, 1));
            sqlite3_finalize(s);
            return TAME_E_CORRUPT;
        }
    }
    rc = r == SQLITE_DONE ? 0 : store_code(r);
    if (rc) snprintf(why, why_len, "cannot read %s: %s", what, sqlite3_errmsg(st->db));
    sqlite3_finalize(s);
    return rc;
}

int store_verify(struct store *st, char *why, size_t why_len)
{
    sqlite3_stmt *s;
    int rc = store_code(sqlite3_prepare_v2(st->db, "PRAGMA quick_check", -1, &s, NULL));
    if (rc) {
        snprintf(why, why_len, "quick_check failed: %s", sqlite3_errmsg(st->db));
        return rc == TAME_E_CORRUPT ? rc : TAME_E_CORRUPT;
    }
    int r = sqlite3_step(s);
    bool ok = r == SQLITE_ROW && !strcmp((const char *)sqlite3_column_text(s, 0), "ok");
    if (!ok)
        snprintf(why, why_len, "quick_check: %s",
                 r == SQLITE_ROW ? (const char *)sqlite3_column_text(s, 0) : sqlite3_errmsg(st->db));
    sqlite3_finalize(s);
    if (!ok) return TAME_E_CORRUPT;
    rc = verify_table(st, "SELECT id, id, crc, params FROM models", "model parameters", false, why, why_len);
    if (!rc)
        rc = verify_table(st, "SELECT model_id, pos, crc, state FROM checkpoints", "checkpoint", false, why, why_len);
    if (!rc) rc = verify_table(st, "SELECT model_id, seq, crc, event FROM events", "event", false, why, why_len);
    if (!rc)
        rc = verify_table(st, "SELECT model_id, pos, crc, kind, x, y FROM log", "log record", true, why, why_len);
    return rc;
}

/* ---- transactions ---- */

int store_begin(struct store *st) { return run(st, stmt(st, S_BEGIN)); }

int store_commit(struct store *st) { return run(st, stmt(st, S_COMMIT)); }

void store_rollback(struct store *st)
{
    if (!st->db) return;
    /* After FULL, IOERR, BUSY or NOMEM SQLite may already have rolled back. */
    if (!sqlite3_get_autocommit(st->db)) run(st, stmt(st, S_ROLLBACK));
}

int store_savepoint(struct store *st) { return run(st, stmt(st, S_SAVEPOINT)); }
int store_release(struct store *st) { return run(st, stmt(st, S_RELEASE)); }

void store_rollback_to(struct store *st)
{
    if (!st->db) return;
    if (sqlite3_get_autocommit(st->db)) return;
    run(st, stmt(st, S_ROLLBACK_TO));
    run(st, stmt(st, S_RELEASE));
}

/* ---- models ---- */

int store_model_create(struct store *st, const char *name, const void *params, size_t len, int64_t *ret_id)
{
    sqlite3_stmt *s = stmt(st, S_MODEL_INSERT);
    if (s) {
        sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
        sqlite3_bind_blob64(s, 2, params, len, SQLITE_STATIC);
        sqlite3_bind_int64(s, 3, blob_crc(0, params, len));
    }
    int rc = run(st, s);
    if (!rc) *ret_id = sqlite3_last_insert_rowid(st->db);
    return rc;
}

int store_model_delete(struct store *st, int64_t id)
{
    static const enum stmt order[] = {S_LOG_DELETE_MODEL, S_CKPT_DELETE_MODEL, S_EVENTS_DELETE_MODEL,
                                      S_IDS_DELETE_MODEL, S_MODEL_DELETE};
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        sqlite3_stmt *s = stmt(st, order[i]);
        if (s) sqlite3_bind_int64(s, 1, id);
        int rc = run(st, s);
        if (rc) return rc;
    }
    return 0;
}

int store_models(struct store *st, int (*fn)(void *ctx, const struct store_model_row *row), void *ctx)
{
    sqlite3_stmt *s = stmt(st, S_MODELS);
    if (!s) return TAME_E_IO;
    int r, rc = 0;
    while (!rc && (r = sqlite3_step(s)) == SQLITE_ROW) {
        struct store_model_row row = {.id = sqlite3_column_int64(s, 0),
                                      .name = (const char *)sqlite3_column_text(s, 1),
                                      .params = sqlite3_column_blob(s, 2),
                                      .params_len = (size_t)sqlite3_column_bytes(s, 2)};
        if (!row.name || blob_crc(0, row.params, row.params_len) != (uint32_t)sqlite3_column_int64(s, 3))
            rc = TAME_E_CORRUPT;
        else
            rc = fn(ctx, &row);
    }
    if (!rc && r != SQLITE_DONE) rc = store_code(r);
    sqlite3_reset(s);
    return rc;
}

/* ---- sample log ---- */

int store_log_append(struct store *st, int64_t model, uint64_t pos, enum store_kind kind, uint32_t items,
                     const void *x, size_t x_len, const void *y, size_t y_len)
{
    sqlite3_stmt *s = stmt(st, S_LOG_INSERT);
    if (s) {
        sqlite3_bind_int64(s, 1, model);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)pos);
        sqlite3_bind_int64(s, 3, items);
        sqlite3_bind_int(s, 4, (int)kind);
        if (x_len) sqlite3_bind_blob64(s, 5, x, x_len, SQLITE_STATIC);
        if (y_len) sqlite3_bind_blob64(s, 6, y, y_len, SQLITE_STATIC);
        sqlite3_bind_int64(s, 7, record_crc((int)kind, x, x_len, y, y_len));
    }
    return run(st, s);
}

int store_id_claim(struct store *st, int64_t model, const char *id, size_t id_len, uint64_t pos)
{
    sqlite3_stmt *s = stmt(st, S_ID_INSERT);
    if (s) {
        sqlite3_bind_int64(s, 1, model);
        sqlite3_bind_text64(s, 2, id, id_len, SQLITE_STATIC, SQLITE_UTF8);
        sqlite3_bind_int64(s, 3, (sqlite3_int64)pos);
    }
    int rc = run(st, s);
    return rc ? rc : sqlite3_changes(st->db) > 0;
}

int store_log_each(struct store *st, int64_t model, uint64_t pos,
                   int (*fn)(void *ctx, const struct store_record *rec), void *ctx)
{
    /* Its own statement, not the cached one: fn may call into the store. */
    sqlite3_stmt *s;
    int rc = store_code(sqlite3_prepare_v2(st->db, stmt_sql[S_LOG_EACH], -1, &s, NULL));
    if (rc) return rc;
    sqlite3_bind_int64(s, 1, model);
    sqlite3_bind_int64(s, 2, (sqlite3_int64)pos);
    int r;
    while (!rc && (r = sqlite3_step(s)) == SQLITE_ROW) {
        struct store_record rec = {.pos = (uint64_t)sqlite3_column_int64(s, 0),
                                   .items = (uint32_t)sqlite3_column_int64(s, 1),
                                   .kind = (enum store_kind)sqlite3_column_int(s, 2),
                                   .x = sqlite3_column_blob(s, 3),
                                   .x_len = (size_t)sqlite3_column_bytes(s, 3),
                                   .y = sqlite3_column_blob(s, 4),
                                   .y_len = (size_t)sqlite3_column_bytes(s, 4)};
        if (record_crc((int)rec.kind, rec.x, rec.x_len, rec.y, rec.y_len) != (uint32_t)sqlite3_column_int64(s, 5))
            rc = TAME_E_CORRUPT;
        else
            rc = fn(ctx, &rec);
    }
    if (!rc && r != SQLITE_DONE) rc = store_code(r);
    sqlite3_finalize(s);
    return rc;
}

int store_log_tail(struct store *st, int64_t model, uint64_t pos, uint64_t *ret_end, uint64_t *ret_samples)
{
    sqlite3_stmt *s = stmt(st, S_LOG_TAIL);
    if (!s) return TAME_E_IO;
    sqlite3_bind_int64(s, 1, (sqlite3_int64)pos);
    sqlite3_bind_int64(s, 2, model);
    sqlite3_bind_int64(s, 3, (sqlite3_int64)pos);
    int r = sqlite3_step(s);
    int rc = r == SQLITE_ROW ? 0 : store_code(r) ? store_code(r) : TAME_E_IO;
    if (!rc) {
        bool empty = sqlite3_column_type(s, 0) == SQLITE_NULL;
        *ret_end = empty ? pos : (uint64_t)sqlite3_column_int64(s, 0);
        *ret_samples = empty ? 0 : (uint64_t)sqlite3_column_int64(s, 1);
    }
    sqlite3_reset(s);
    return rc;
}

/* ---- checkpoints and events ---- */

/* A checkpoint is tens of MB for a model with many experts.  Bound as a
 * blob, SQLite would first build the whole row in memory, a second copy of
 * the state; so the row gets a zeroblob of the right size, which SQLite
 * writes without materialising when it ends the row, and the state goes
 * into it piece by piece (incremental blob I/O, same transaction). */
#define BLOB_CHUNK (4 << 20)

int store_checkpoint_put(struct store *st, int64_t model, uint64_t pos, const void *state, size_t len)
{
    if (len > INT_MAX) return TAME_E_LIMIT;
    sqlite3_stmt *s = stmt(st, S_CKPT_PUT);
    if (s) {
        sqlite3_bind_int64(s, 1, model);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)pos);
        sqlite3_bind_int64(s, 3, blob_crc(0, state, len));
        sqlite3_bind_int64(s, 4, (sqlite3_int64)len);
    }
    int rc = run(st, s);
    if (rc || len == 0) return rc;
    sqlite3_blob *b = NULL;
    /* model_id is the table's INTEGER PRIMARY KEY, hence the rowid */
    rc = store_code(sqlite3_blob_open(st->db, "main", "checkpoints", "state", model, 1, &b));
    for (size_t off = 0; !rc && off < len; off += BLOB_CHUNK) {
        size_t n = len - off < BLOB_CHUNK ? len - off : BLOB_CHUNK;
        rc = store_code(sqlite3_blob_write(b, (const uint8_t *)state + off, (int)n, (int)off));
    }
    int rc_close = store_code(sqlite3_blob_close(b));
    return rc ? rc : rc_close;
}

int store_trim(struct store *st, int64_t model, uint64_t log_before, uint64_t ids_before, int max_rows,
               bool *ret_done)
{
    sqlite3_stmt *s = stmt(st, S_LOG_TRIM);
    if (s) {
        sqlite3_bind_int64(s, 1, model);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)log_before);
        sqlite3_bind_int(s, 3, max_rows);
    }
    int rc = run(st, s);
    if (rc) return rc;
    int log_rows = sqlite3_changes(st->db);
    s = stmt(st, S_IDS_TRIM);
    if (s) {
        sqlite3_bind_int64(s, 1, model);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)ids_before);
        sqlite3_bind_int(s, 3, max_rows * 256);
    }
    rc = run(st, s);
    if (rc) return rc;
    *ret_done = log_rows < max_rows && sqlite3_changes(st->db) < max_rows * 256;
    return 0;
}

int store_checkpoint_get(struct store *st, int64_t model, uint64_t *ret_pos, void **ret_state, size_t *ret_len)
{
    sqlite3_stmt *s = stmt(st, S_CKPT_GET);
    if (!s) return TAME_E_IO;
    sqlite3_bind_int64(s, 1, model);
    int r = sqlite3_step(s);
    int rc = r == SQLITE_ROW ? 0 : r == SQLITE_DONE ? TAME_E_NOTFOUND : store_code(r) ? store_code(r) : TAME_E_IO;
    if (!rc) {
        const void *b = sqlite3_column_blob(s, 1);
        size_t n = (size_t)sqlite3_column_bytes(s, 1);
        if (blob_crc(0, b, n) != (uint32_t)sqlite3_column_int64(s, 2)) {
            rc = TAME_E_CORRUPT;
        } else {
            void *copy = malloc(n ? n : 1);
            if (!copy) rc = TAME_E_NOMEM;
            else {
                if (n) memcpy(copy, b, n);
                *ret_pos = (uint64_t)sqlite3_column_int64(s, 0);
                *ret_state = copy;
                *ret_len = n;
            }
        }
    }
    sqlite3_reset(s);
    return rc;
}

int store_event_put(struct store *st, int64_t model, uint64_t seq, const void *ev, size_t len)
{
    sqlite3_stmt *s = stmt(st, S_EVENT_PUT);
    if (s) {
        sqlite3_bind_int64(s, 1, model);
        sqlite3_bind_int64(s, 2, (sqlite3_int64)seq);
        sqlite3_bind_blob64(s, 3, ev, len, SQLITE_STATIC);
        sqlite3_bind_int64(s, 4, blob_crc(0, ev, len));
    }
    return run(st, s);
}

int store_events_each(struct store *st, int64_t model,
                      int (*fn)(void *ctx, uint64_t seq, const void *ev, size_t len), void *ctx)
{
    sqlite3_stmt *s;
    int rc = store_code(sqlite3_prepare_v2(st->db, stmt_sql[S_EVENTS_EACH], -1, &s, NULL));
    if (rc) return rc;
    sqlite3_bind_int64(s, 1, model);
    int r;
    while (!rc && (r = sqlite3_step(s)) == SQLITE_ROW) {
        const void *b = sqlite3_column_blob(s, 1);
        size_t n = (size_t)sqlite3_column_bytes(s, 1);
        if (blob_crc(0, b, n) != (uint32_t)sqlite3_column_int64(s, 2)) rc = TAME_E_CORRUPT;
        else rc = fn(ctx, (uint64_t)sqlite3_column_int64(s, 0), b, n);
    }
    if (!rc && r != SQLITE_DONE) rc = store_code(r);
    sqlite3_finalize(s);
    return rc;
}

int store_probe(struct store *st)
{
    int rc = store_begin(st);
    if (!rc) rc = run(st, stmt(st, S_PROBE));
    if (!rc) rc = store_commit(st);
    if (rc) store_rollback(st);
    return rc;
}

int store_wal_fold(struct store *st, bool restart, int *ret_frames, int *ret_folded)
{
    *ret_frames = *ret_folded = 0;
    if (!st->db) return TAME_E_UNAVAIL;
    int rc = sqlite3_wal_checkpoint_v2(st->db, NULL, restart ? SQLITE_CHECKPOINT_RESTART : SQLITE_CHECKPOINT_PASSIVE,
                                       ret_frames, ret_folded);
    return rc == SQLITE_BUSY ? 0 : store_code(rc); /* busy: a writer or reader is in the way; next time */
}

/* ---- backup ---- */

int store_backup(const char *src, const char *dst, char *why, size_t why_len)
{
    struct store *in;
    struct store_options o = {.readonly = true, .busy_ms = 5000};
    int rc = store_open(src, &o, &in, why, why_len);
    if (rc) return rc;
    sqlite3 *out = NULL;
    rc = store_code(sqlite3_open_v2(dst, &out, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL));
    if (rc) {
        snprintf(why, why_len, "cannot create %s: %s", dst, out ? sqlite3_errmsg(out) : "out of memory");
        goto done;
    }
    sqlite3_backup *b = sqlite3_backup_init(out, "main", in->db, "main");
    if (!b) {
        rc = store_code(sqlite3_errcode(out));
        snprintf(why, why_len, "cannot back up to %s: %s", dst, sqlite3_errmsg(out));
        goto done;
    }
    /* In steps, so a writing daemon is locked out only briefly; a write in
     * between restarts the copy, which then catches up. */
    int r;
    while ((r = sqlite3_backup_step(b, 1024)) == SQLITE_OK || r == SQLITE_BUSY || r == SQLITE_LOCKED)
        if (r != SQLITE_OK) sqlite3_sleep(20);
    sqlite3_backup_finish(b);
    rc = r == SQLITE_DONE ? 0 : store_code(r);
    if (rc) snprintf(why, why_len, "backup to %s failed: %s", dst, sqlite3_errstr(r));
done:
    sqlite3_close_v2(out);
    store_close(in);
    return rc;
}
