/* serial.c: a network as one self-checking blob.
 *   u32 magic "TMLP" | u32 version | u32 n_layers | u32 dims[n_layers+1]
 *   | u8 head | f32 head_scale | u8 has_mask | f32 param[n] | f32 vel[n] | (u8 mask[n] if has_mask) | u32 crc32
 * Gradients are scratch and are not saved. */
#include "nn_internal.h"

#include <string.h>

#define MLP_MAGIC 0x504c4d54u /* "TMLP" little-endian */
#define MLP_VERSION 1u

void nn_mlp_save(const struct nn_mlp *mlp, struct tame_wbuf *w)
{
    size_t start = w->len;
    tame_wbuf_u32(w, MLP_MAGIC);
    tame_wbuf_u32(w, MLP_VERSION);
    tame_wbuf_u32(w, (uint32_t)mlp->n_layers);
    tame_wbuf_u32(w, (uint32_t)mlp->layer[0].in);
    for (int l = 0; l < mlp->n_layers; l++) tame_wbuf_u32(w, (uint32_t)mlp->layer[l].out);
    tame_wbuf_u8(w, (uint8_t)mlp->head);
    tame_wbuf_f32(w, mlp->head_scale);
    tame_wbuf_u8(w, mlp->mask != NULL);
    tame_wbuf_f32s(w, mlp->param, mlp->n_params);
    tame_wbuf_f32s(w, mlp->vel, mlp->n_params);
    if (mlp->mask)
        for (size_t i = 0; i < mlp->n_params; i++) tame_wbuf_u8(w, mlp->mask[i] != 0.0f);
    tame_wbuf_crc(w, start);
}

int nn_mlp_load(struct tame_rbuf *r, struct nn_mlp **ret_mlp)
{
    size_t start = r->pos;
    if (tame_rbuf_u32(r) != MLP_MAGIC) return r->err ? r->err : TAME_E_CORRUPT;
    if (tame_rbuf_u32(r) != MLP_VERSION) return r->err ? r->err : TAME_E_VERSION;
    uint32_t n_layers = tame_rbuf_u32(r);
    if (r->err || n_layers < 1 || n_layers > NN_MAX_LAYERS) return TAME_E_CORRUPT;
    int dims[NN_MAX_LAYERS + 1];
    for (uint32_t i = 0; i <= n_layers; i++) {
        uint32_t d = tame_rbuf_u32(r);
        if (r->err || d < 1 || d > NN_MAX_WIDTH) return TAME_E_CORRUPT;
        dims[i] = (int)d;
    }
    uint8_t head = tame_rbuf_u8(r);
    float head_scale = tame_rbuf_f32(r);
    uint8_t has_mask = tame_rbuf_u8(r);
    if (r->err || has_mask > 1 || head > NN_HEAD_SOFTMAX || !(head_scale > 0 && head_scale <= 100))
        return TAME_E_CORRUPT;

    /* The blob must hold what its shapes announce before anything is
     * allocated for them: damaged widths must not ask for gigabytes (found
     * by fuzz-state). */
    size_t n_params = 0;
    for (uint32_t i = 0; i < n_layers; i++) n_params += (size_t)dims[i] * (size_t)dims[i + 1] + (size_t)dims[i + 1];
    if (tame_rbuf_left(r) < n_params * (has_mask ? 9 : 8) + 4) {
        r->err = TAME_E_CORRUPT;
        return TAME_E_CORRUPT;
    }
    struct nn_mlp *m;
    int rc = nn_mlp_alloc(dims, (int)n_layers + 1, &m);
    if (rc < 0) return rc == TAME_E_INVAL ? TAME_E_CORRUPT : rc;
    m->head = (enum nn_head)head;
    m->head_scale = head_scale;
    TAME_ASSERT(m->n_params == n_params);
    tame_rbuf_f32s(r, m->param, m->n_params);
    tame_rbuf_f32s(r, m->vel, m->n_params);
    if (has_mask) {
        m->mask = tame_malloc(m->n_params * sizeof(float));
        if (!m->mask) {
            nn_mlp_free(m);
            return TAME_E_NOMEM;
        }
        for (size_t i = 0; i < m->n_params; i++) {
            uint8_t b = tame_rbuf_u8(r);
            if (b > 1 || (b == 0 && (m->param[i] != 0.0f || m->vel[i] != 0.0f))) goto corrupt;
            m->mask[i] = b;
        }
    }
    tame_rbuf_crc(r, start);
    if (r->err) goto corrupt;
    *ret_mlp = m;
    return 0;
corrupt:
    nn_mlp_free(m);
    r->err = TAME_E_CORRUPT;
    return TAME_E_CORRUPT;
}
