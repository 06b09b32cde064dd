/* store.h: tamed's SQLite database (DESIGN 3).  One struct store is one
 * connection; the daemon opens one writer (used by one thread at a time) and
 * readers as it needs.  The store knows tables and byte strings, never what a
 * model's bytes mean: learner states, params and events arrive as opaque
 * blobs, each stored with a CRC-32 that is checked whenever it is read.
 *
 * Every function returns 0 or a negative TAME_E_* code; SQLite's result codes
 * are translated in one place (store_code): full disk, read-only files, I/O
 * errors and lock timeouts are TAME_E_UNAVAIL (answered 503), damage is
 * TAME_E_CORRUPT.  store_errmsg() says what SQLite said last. */
#ifndef TAME_STORE_H
#define TAME_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_SCHEMA_VERSION 3

struct store;

enum store_sync {
    STORE_SYNC_NORMAL, /* WAL, synchronous=NORMAL: no loss on a process crash */
    STORE_SYNC_FULL,   /* WAL, synchronous=FULL: no loss on power loss either */
};

/* Log record kinds: a request's samples, or a control mark at a position. */
enum store_kind { STORE_SAMPLES = 0, STORE_FLUSH = 1, STORE_SELECTOR = 2 };

struct store_options {
    enum store_sync sync;
    bool readonly;      /* open for reading only (verification, backup source) */
    int busy_ms;        /* wait this long for a lock before TAME_E_UNAVAIL */
    int64_t max_bytes;  /* cap on the database size; 0 = none */
    bool no_verify;     /* a second connection to a database already verified */
    bool manual_wal;    /* no automatic WAL checkpoints: store_wal_fold runs them */
};

/* Open (creating if absent), refuse a file that is not a tamed database or is
 * newer than this build; for writing, also verify it (store_verify) and bring
 * an older one forward, each step in its own transaction.  Nothing is written
 * to a database that fails these checks.  On failure *why explains. */
int store_open(const char *path, const struct store_options *o, struct store **ret, char *why,
               size_t why_len);
/* False when the file could only be opened for reading (permissions, a
 * read-only mount): every write then fails with TAME_E_UNAVAIL. */
bool store_writable(const struct store *st);
/* Open the file again; TAME_E_UNAVAIL unless it is writable now, in which
 * case st continues on the new connection. */
int store_reopen(struct store *st);
/* Close; on a writer, first fold the WAL into the database (TRUNCATE). */
void store_close(struct store *st);
const char *store_errmsg(const struct store *st);

/* PRAGMA quick_check, then the CRC of every stored blob.  TAME_E_CORRUPT and
 * a message naming the table, model and row when something is wrong. */
int store_verify(struct store *st, char *why, size_t why_len);

/* Write transactions (BEGIN IMMEDIATE) and savepoints inside them, so one
 * request's failure undoes only that request. */
int store_begin(struct store *st);
int store_commit(struct store *st);
void store_rollback(struct store *st); /* safe after any failure */
int store_savepoint(struct store *st);
int store_release(struct store *st);
void store_rollback_to(struct store *st);

/* ---- models ---- */
int store_model_create(struct store *st, const char *name, const void *params, size_t len,
                       int64_t *ret_id); /* TAME_E_EXIST if the name is taken */
int store_model_delete(struct store *st, int64_t id);

struct store_model_row {
    int64_t id;
    const char *name;
    const void *params;
    size_t params_len;
};
/* Calls fn for every model, by id; stops at fn's first error.  The row's
 * pointers live until fn returns. */
int store_models(struct store *st, int (*fn)(void *ctx, const struct store_model_row *row), void *ctx);

/* ---- sample log ---- */
/* Append a record of `items` items at position pos (a control mark is one
 * item with no x or y). */
int store_log_append(struct store *st, int64_t model, uint64_t pos, enum store_kind kind, uint32_t items,
                     const void *x, size_t x_len, const void *y, size_t y_len);
/* Remember a client's sample id; 1 if it is new, 0 if it was seen before. */
int store_id_claim(struct store *st, int64_t model, const char *id, size_t id_len, uint64_t pos);

struct store_record {
    uint64_t pos;
    uint32_t items;
    enum store_kind kind;
    const void *x, *y;
    size_t x_len, y_len;
};
/* Records holding any item at or after pos, in order; their CRC checked. */
int store_log_each(struct store *st, int64_t model, uint64_t pos,
                   int (*fn)(void *ctx, const struct store_record *rec), void *ctx);
/* Where the log ends (the next free position) and how many samples it holds
 * from pos on; *end = pos when it is empty. */
int store_log_tail(struct store *st, int64_t model, uint64_t pos, uint64_t *ret_end, uint64_t *ret_samples);

/* ---- checkpoints ---- */
/* Replace the model's checkpoint: its state after consuming items [0, pos).
 * Call inside a transaction. */
int store_checkpoint_put(struct store *st, int64_t model, uint64_t pos, const void *state, size_t len);
/* Delete up to max_rows log records wholly before log_before, and up to
 * 256 x max_rows sample ids of items before ids_before: the garbage a
 * checkpoint left, a little at a time.  *ret_done when nothing is left. */
int store_trim(struct store *st, int64_t model, uint64_t log_before, uint64_t ids_before, int max_rows,
               bool *ret_done);
/* The newest checkpoint: *ret_state is malloc'd (caller frees); TAME_E_NOTFOUND
 * if the model has none. */
int store_checkpoint_get(struct store *st, int64_t model, uint64_t *ret_pos, void **ret_state,
                         size_t *ret_len);
int store_event_put(struct store *st, int64_t model, uint64_t seq, const void *ev, size_t len);
int store_events_each(struct store *st, int64_t model,
                      int (*fn)(void *ctx, uint64_t seq, const void *ev, size_t len), void *ctx);

/* A tiny write that succeeds once the database is writable again. */
int store_probe(struct store *st);

/* A consistent copy of the database at src, taken with SQLite's online
 * backup API while a daemon may be writing it. */
int store_backup(const char *src, const char *dst, char *why, size_t why_len);

/* Fold committed WAL frames back into the database (a PASSIVE checkpoint,
 * or RESTART, which also waits for readers so the WAL starts over), on a
 * connection of its own so commits never wait for it.  *ret_frames: frames
 * in the WAL; *ret_folded: of those, now in the database. */
int store_wal_fold(struct store *st, bool restart, int *ret_frames, int *ret_folded);
/* With manual_wal: frames in the WAL after this connection's last commit. */
int store_wal_frames(const struct store *st);

#endif
