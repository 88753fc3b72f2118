// SPDX-License-Identifier: Apache-2.0
// BLAS level-3 wrappers with explicit leading dimensions (detail/blas3.hpp).
#include "detail/blas3.hpp"

#include <limits>
#include <stdexcept>

#include <Eigen/Core>

#include "deadspec/errors.hpp"
#include "detail/blas_names.hpp"
#include "detail/core.hpp"

namespace deadspec::detail {

namespace {
using RowMap = Eigen::Map<Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>,
                          0, Eigen::OuterStride<>>;
using ConstRowMap =
    Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>, 0,
               Eigen::OuterStride<>>;

#ifdef DEADSPEC_HAVE_LAPACK
constexpr auto bi = &to_blasint;  // (short: every BLAS call below converts 4-13 sizes)
#endif

}  // namespace

void gemm_nt_ld(std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a,
                std::int64_t lda, const double* b, std::int64_t ldb, double beta, double* c,
                std::int64_t ldc) {
    if (m == 0 || n == 0) return;
#ifdef DEADSPEC_HAVE_LAPACK
    BlasThreads threads(2.0 * flops3(m, n, k));  // auto thread count (blas.cpp)
    DS_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, bi(m), bi(n), bi(k), alpha, a,
                         bi(lda), b, bi(ldb), beta, c, bi(ldc));
#else
    RowMap mc(c, m, n, Eigen::OuterStride<>(ldc));
    ConstRowMap ma(a, m, k, Eigen::OuterStride<>(lda)), mb(b, n, k, Eigen::OuterStride<>(ldb));
    if (beta == 0.0)
        mc.noalias() = alpha * ma * mb.transpose();
    else
        mc = beta * mc + alpha * ma * mb.transpose();
#endif
}

void syrk_lower_ld(std::int64_t n, std::int64_t k, double alpha, const double* x,
                   std::int64_t ldx, double beta, double* c, std::int64_t ldc) {
    if (n == 0) return;
#ifdef DEADSPEC_HAVE_LAPACK
    BlasThreads threads(flops3(n, n, k));
#endif
#if defined(DEADSPEC_BLAS_PREFIX)
    DS_BLAS(cblas_dgemmt)(CblasRowMajor, CblasLower, CblasNoTrans, CblasTrans, bi(n), bi(k),
                          alpha, x, bi(ldx), x, bi(ldx), beta, c, bi(ldc));
#elif defined(DEADSPEC_HAVE_LAPACK)
    DS_BLAS(cblas_dsyrk)(CblasRowMajor, CblasLower, CblasNoTrans, bi(n), bi(k), alpha, x,
                         bi(ldx), beta, c, bi(ldc));
#else
    RowMap mc(c, n, n, Eigen::OuterStride<>(ldc));
    ConstRowMap mx(x, n, k, Eigen::OuterStride<>(ldx));
    if (beta != 1.0) mc.triangularView<Eigen::Lower>() = beta * mc;
    mc.selfadjointView<Eigen::Lower>().rankUpdate(mx, alpha);
#endif
}

void gemm_tn_batched(std::int64_t count, std::int64_t m, std::int64_t n, std::int64_t k,
                     const double* a, std::int64_t lda, std::int64_t stride_a, const double* b,
                     std::int64_t ldb, std::int64_t stride_b, double* c, std::int64_t ldc,
                     std::int64_t stride_c) {
    if (count == 0 || m == 0 || n == 0) return;
#ifdef DEADSPEC_HAVE_LAPACK
    BlasThreads threads(2.0 * flops3(count, m, n) * static_cast<double>(k));
#endif
#if defined(DEADSPEC_BLAS_PREFIX)
    DS_BLAS(cblas_dgemm_batch_strided)(CblasRowMajor, CblasTrans, CblasNoTrans, bi(m), bi(n),
                                       bi(k), 1.0, a, bi(lda), bi(stride_a), b, bi(ldb),
                                       bi(stride_b), 0.0, c, bi(ldc), bi(stride_c), bi(count));
#else
    for (std::int64_t i = 0; i < count; ++i) {
        const double* ai = a + i * stride_a;
        const double* bi_ = b + i * stride_b;
        double* ci = c + i * stride_c;
#ifdef DEADSPEC_HAVE_LAPACK
        DS_BLAS(cblas_dgemm)(CblasRowMajor, CblasTrans, CblasNoTrans, bi(m), bi(n), bi(k), 1.0,
                             ai, bi(lda), bi_, bi(ldb), 0.0, ci, bi(ldc));
#else
        RowMap mc(ci, m, n, Eigen::OuterStride<>(ldc));
        ConstRowMap ma(ai, k, m, Eigen::OuterStride<>(lda)), mb(bi_, k, n, Eigen::OuterStride<>(ldb));
        mc.noalias() = ma.transpose() * mb;
#endif
    }
#endif
}

}  // namespace deadspec::detail
