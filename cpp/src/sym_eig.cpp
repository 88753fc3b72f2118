// SPDX-License-Identifier: Apache-2.0
// Symmetric eigendecomposition through LAPACK ?syevd (or Eigen), descending order.
#include "deadspec/sym_eig.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "detail/core.hpp"

namespace deadspec {

std::string eig_backend() { return detail::lapack_backend_name(); }
std::string blas_info() { return detail::blas_config(); }
int num_threads() { return detail::blas_num_threads(); }
void set_num_threads(int n) { detail::blas_set_num_threads(n); }
void set_num_threads_auto() { detail::blas_set_threads_auto(); }
int threads_in_use() { return detail::blas_threads_in_use(); }

namespace detail {
// `work` is column-major and owned: LAPACK reads its lower triangle and overwrites it.
SymEigResult sym_eig_owned(Eigen::MatrixXd work, bool vectors, const char* fn, bool upper) {
    Eigen::VectorXd w;
    SymEigResult out;
    const int info = detail::syevd(work, w, vectors, fn, upper);
    if (info > 0) out.status = EigStatus::NotConverged;
    // The solvers scale the matrix into range internally; an infinite eigenvalue here is one
    // whose magnitude exceeds float64 (a finite matrix can have one: [[M, M], [M, M]] with
    // M = 1e308 has 2M). Raise, as gram does, rather than hand back inf.
    if (out.status == EigStatus::Success && !w.allFinite())
        throw std::overflow_error(concat(fn, ": an eigenvalue overflowed float64 (the matrix is "
                                             "too large to decompose; rescale it)"));
    out.values = w.reverse();
    if (vectors) out.vectors = work.rowwise().reverse();
    return out;
}

SymEigResult sym_eig_rowmajor(const double* a, std::int64_t n, bool vectors, const char* fn) {
    // The row-major lower triangle is the column-major upper one: a plain copy (a transposed
    // copy by 64×64 tiles took 0.04 s at n = 2048 and 0.23 s at n = 4096, bench/README.md).
    // Large copies run on the core's threads: most of their time is the first touch of the
    // fresh pages (0.01 s of a 2048² copy), which the kernel serves in parallel.
    Eigen::MatrixXd work(n, n);
    double* w = work.data();
    parallel_rows(n, worker_threads(n * n, std::int64_t(1) << 21, n),
                  [a, w, n](std::int64_t r0, std::int64_t r1) {
                      std::memcpy(w + r0 * n, a + r0 * n,
                                  static_cast<std::size_t>((r1 - r0) * n) * sizeof(double));
                  });
    return sym_eig_owned(std::move(work), vectors, fn, true);
}

double max_asymmetry(const double* a, std::int64_t n) {
    double worst = 0.0;
    for_tiles(n, true, [a, n, &worst](std::int64_t i, std::int64_t j) {
        // halved (exact) so that entries near ±max do not overflow the difference
        worst = std::max(worst, std::abs(0.5 * a[i * n + j] - 0.5 * a[j * n + i]));
    });
    return 2.0 * worst;
}
}  // namespace detail

SymEigResult sym_eig(const Eigen::Ref<const Eigen::MatrixXd>& a, bool vectors) {
    DEADSPEC_CHECK_ARG(a.rows() == a.cols(), "deadspec.sym_eig: a must be a square matrix, got shape (",
                       a.rows(), ", ", a.cols(), ")");
    DEADSPEC_CHECK_ARG(a.rows() > 0, "deadspec.sym_eig: a must not be empty, got shape (0, 0)");
    DEADSPEC_CHECK_ARG(a.allFinite(), "deadspec.sym_eig: a must be finite, got NaN or Inf");
    return detail::sym_eig_owned(a, vectors, "deadspec.sym_eig");
}

SymEigResult sym_eig(const TensorView& a, bool vectors) {
    constexpr const char* fn = "deadspec.sym_eig";
    detail::check_cpu_float(a, fn, "a");
    DEADSPEC_CHECK_ARG(a.ndim() == 2 && a.shape[0] == a.shape[1], fn,
                       ": a must be a square matrix, got shape ", a.shape_string());
    const auto h = detail::host_matrix(a, 1, fn, "a");
    // The row-major data is copied into column-major storage (one copy, which LAPACK needs
    // anyway since it overwrites its input), so the lower triangle of `a` is what is read.
    return detail::sym_eig_rowmajor(h.data(), h.rows(), vectors, fn);
}

}  // namespace deadspec
