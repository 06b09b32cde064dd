/* remote.h: tame-eval's HTTP client for a running tamed (libcurl, one
 * keep-alive connection, JSON with jansson). */
#ifndef TAME_TOOLS_REMOTE_H
#define TAME_TOOLS_REMOTE_H

#include "tame/tame.h"

struct remote;

/* base: "http://127.0.0.1:8080"; token may be NULL. */
int remote_open(const char *base, const char *token, struct remote **ret);
void remote_close(struct remote *r);
/* Replace any model of that name by a new one with these parameters. */
int remote_create(struct remote *r, const char *name, const struct tame_params *p);
/* Append n samples (column form), retrying while the daemon answers 429. */
int remote_samples(struct remote *r, const char *name, const float *x, const int *y, int n, int dim);
int remote_flush(struct remote *r, const char *name);
/* Poll until `trained` samples are trained and, with `selector`, no
 * selector retrain is due; *ret_experts: experts of the model then. */
int remote_wait(struct remote *r, const char *name, uint64_t trained, bool selector, int *ret_experts);
/* Ask for a selector retrain on the current buffer and wait until the new
 * one is installed (nothing to do with fewer than 2 experts). */
int remote_retrain_selector(struct remote *r, const char *name);
/* All events, in order; caller frees *ret with free(). */
int remote_events(struct remote *r, const char *name, struct tame_event **ret, size_t *ret_n);
/* Predict n rows; fills out[n] and probs[n x classes]. */
int remote_predict(struct remote *r, const char *name, const float *x, int n, int dim, int classes,
                   struct tame_prediction *out, float *probs);
/* The last error message. */
const char *remote_error(const struct remote *r);

#endif
