/* gemm.c: the one home of <cblas.h>.  Every matrix product of tamed goes
 * through nn_gemm; nn_gemm_ref computes the same thing in plain C so tests
 * can check the BLAS call's layout arguments on odd shapes. */
#include "tame/nn.h"

#include <cblas.h>
#include <stdatomic.h>

static atomic_bool gemm_ref;

bool nn_gemm_use_ref(bool use_ref) { return atomic_exchange(&gemm_ref, use_ref); }

/* OpenBLAS's own call (declared in its cblas.h). */
void nn_blas_threads(int n) { openblas_set_num_threads(n); }

void nn_gemm(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
             int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    if (atomic_load_explicit(&gemm_ref, memory_order_relaxed)) {
        nn_gemm_ref(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c,
                ldc);
}

void nn_gemm_ref(bool trans_a, bool trans_b, int m, int n, int k, float alpha, const float *a,
                 int lda, const float *b, int ldb, float beta, float *c, int ldc)
{
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < n; j++) {
            double acc = 0;
            for (int p = 0; p < k; p++) {
                float av = trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                float bv = trans_b ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                acc += (double)av * bv;
            }
            float *cv = &c[(size_t)i * ldc + j];
            *cv = (float)(alpha * acc + (beta == 0 ? 0.0 : (double)beta * *cv));
        }
    }
}
