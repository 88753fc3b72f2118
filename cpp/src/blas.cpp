// SPDX-License-Identifier: Apache-2.0
// BLAS/LAPACK wrappers: OpenBLAS (PyPI scipy-openblas32 or the system's) or Eigen.
#include <algorithm>

#include <Eigen/Eigenvalues>

#include "detail/blas_names.hpp"
#include "detail/core.hpp"

namespace deadspec::detail {

namespace {
#ifdef DEADSPEC_HAVE_LAPACK
// BLAS takes 32-bit ints in scipy-openblas32: refuse sizes it cannot represent.
blasint to_blasint(std::int64_t v) {
    if (v > std::numeric_limits<blasint>::max())
        throw std::invalid_argument(concat("deadspec: dimension ", v,
                                           " exceeds the 32-bit BLAS index range"));
    return static_cast<blasint>(v);
}
#endif
}  // namespace

void symmetrize_from_lower(RowMatrixXd& c) {
    c.triangularView<Eigen::StrictlyUpper>() = c.transpose().triangularView<Eigen::StrictlyUpper>();
}

void syrk_rows_accumulate(const double* x, std::int64_t rows, std::int64_t cols, double alpha,
                          RowMatrixXd& c) {
    if (rows == 0 || cols == 0) return;
#ifdef DEADSPEC_HAVE_LAPACK
    DS_BLAS(cblas_dsyrk)(CblasRowMajor, CblasLower, CblasNoTrans, to_blasint(rows),
                         to_blasint(cols), alpha, x, to_blasint(cols), 1.0, c.data(),
                         to_blasint(rows));
#else
    Eigen::Map<const RowMatrixXd> m(x, rows, cols);
    c.selfadjointView<Eigen::Lower>().rankUpdate(m, alpha);
#endif
}

RowMatrixXd gram_rows(const double* x, std::int64_t rows, std::int64_t cols, double alpha) {
    RowMatrixXd c = RowMatrixXd::Zero(rows, rows);
    syrk_rows_accumulate(x, rows, cols, alpha, c);
    symmetrize_from_lower(c);
    return c;
}

RowMatrixXd gram_cols(const double* x, std::int64_t rows, std::int64_t cols, double alpha) {
    RowMatrixXd c = RowMatrixXd::Zero(cols, cols);
    if (rows > 0 && cols > 0) {
#ifdef DEADSPEC_HAVE_LAPACK
        DS_BLAS(cblas_dsyrk)(CblasRowMajor, CblasLower, CblasTrans, to_blasint(cols),
                             to_blasint(rows), alpha, x, to_blasint(cols), 0.0, c.data(),
                             to_blasint(cols));
#else
        Eigen::Map<const RowMatrixXd> m(x, rows, cols);
        c.selfadjointView<Eigen::Lower>().rankUpdate(m.transpose(), alpha);
#endif
    }
    symmetrize_from_lower(c);
    return c;
}

void gemm_tn(const double* a, std::int64_t lda, const double* b, std::int64_t m, std::int64_t n,
             std::int64_t k, double* c) {
#ifdef DEADSPEC_HAVE_LAPACK
    DS_BLAS(cblas_dgemm)(CblasRowMajor, CblasTrans, CblasNoTrans, to_blasint(m), to_blasint(n),
                         to_blasint(k), 1.0, a, to_blasint(lda), b, to_blasint(n), 0.0, c,
                         to_blasint(n));
#else
    Eigen::Map<const RowMatrixXd, 0, Eigen::OuterStride<>> ma(a, k, m, Eigen::OuterStride<>(lda));
    Eigen::Map<const RowMatrixXd> mb(b, k, n);
    Eigen::Map<RowMatrixXd> mc(c, m, n);
    mc.noalias() = ma.transpose() * mb;
#endif
}

void gemm_nt(const double* a, const double* b, std::int64_t m, std::int64_t n, std::int64_t k,
             double* c) {
#ifdef DEADSPEC_HAVE_LAPACK
    DS_BLAS(cblas_dgemm)(CblasRowMajor, CblasNoTrans, CblasTrans, to_blasint(m), to_blasint(n),
                         to_blasint(k), 1.0, a, to_blasint(k), b, to_blasint(k), 0.0, c,
                         to_blasint(n));
#else
    Eigen::Map<const RowMatrixXd> ma(a, m, k), mb(b, n, k);
    Eigen::Map<RowMatrixXd> mc(c, m, n);
    mc.noalias() = ma * mb.transpose();
#endif
}

namespace {
int syevd_eigen(Eigen::MatrixXd& a, Eigen::VectorXd& w, bool vectors) {
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> solver(
        a, vectors ? Eigen::ComputeEigenvectors : Eigen::EigenvaluesOnly);
    if (solver.info() != Eigen::Success) return 1;
    w = solver.eigenvalues();
    if (vectors) a = solver.eigenvectors();
    return 0;
}
}  // namespace

int syevd(Eigen::MatrixXd& a, Eigen::VectorXd& w, bool vectors) {
    const auto n = a.rows();
    w.resize(n);
#ifdef DEADSPEC_HAVE_LAPACK
    // Small problems go to Eigen's single-threaded solver: it is as fast as one LAPACK thread up
    // to n = 256 (bench/README.md), and it never wakes OpenBLAS's thread pool, whose
    // busy-waiting threads contend with torch's OpenMP pool on small machines (a 256² spectrum
    // measured 1.45 s through 2 OpenBLAS threads right after torch work, 0.02 s alone).
    if (n <= kEigenSolverMaxDim) return syevd_eigen(a, w, vectors);
    const auto info = DS_BLAS(LAPACKE_dsyevd)(LAPACK_COL_MAJOR, vectors ? 'V' : 'N', 'L',
                                              to_blasint(n), a.data(), to_blasint(n), w.data());
    if (info < 0)
        throw Error(concat("deadspec: LAPACKE_dsyevd rejected argument ", -info));
    return static_cast<int>(info);
#else
    return syevd_eigen(a, w, vectors);
#endif
}

std::string blas_config() {
#if defined(DEADSPEC_BLAS_PREFIX)
    return DS_BLAS(openblas_get_config)();
#elif defined(DEADSPEC_SYSTEM_LAPACK)
    return "system BLAS/LAPACK";
#else
    return "none";
#endif
}

int blas_num_threads() {
#if defined(DEADSPEC_BLAS_PREFIX)
    return DS_BLAS(openblas_get_num_threads)();
#else
    return 1;
#endif
}

void blas_set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument(concat("deadspec.set_num_threads: n must be >= 1, got ", n));
#if defined(DEADSPEC_BLAS_PREFIX)
    DS_BLAS(openblas_set_num_threads)(n);
#endif
}

const char* lapack_backend_name() {
#if defined(DEADSPEC_BLAS_PREFIX)
    return "lapack-syevd (scipy-openblas32); eigen for n <= 256";
#elif defined(DEADSPEC_SYSTEM_LAPACK)
    return "lapack-syevd (system); eigen for n <= 256";
#else
    return "eigen";
#endif
}

}  // namespace deadspec::detail
