// SPDX-License-Identifier: Apache-2.0
// Private helpers of the core: input validation, host copies, BLAS/LAPACK wrappers.
// Naming (cpp/ and python/src): a class's data members take an m_ prefix (m_rows); plain structs
// whose fields are their interface (AdamStep, TensorView, detail::AdamScalars) use bare names.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include "deadspec/errors.hpp"
#include "deadspec/sym_eig.hpp"
#include "deadspec/types.hpp"

namespace deadspec::detail {

/// A float64 row-major view of a tensor's data, flattened to rows×cols: the caller's buffer
/// when it is already float64 and C-contiguous (zero-copy), else an owned converted copy.
class HostMatrix {
public:
    HostMatrix() = default;
    const double* data() const { return m_ptr; }
    std::int64_t rows() const { return m_rows; }
    std::int64_t cols() const { return m_cols; }
    bool copied() const { return m_owned.size() > 0; }
    Eigen::Map<const RowMatrixXd> map() const {
        return Eigen::Map<const RowMatrixXd>(m_ptr, m_rows, m_cols);
    }

private:
    friend HostMatrix host_matrix(const TensorView&, std::int64_t, const char*, const char*);
    RowMatrixXd m_owned;
    const double* m_ptr = nullptr;
    std::int64_t m_rows = 0;
    std::int64_t m_cols = 0;
};

/// Validate that `v` is a non-empty CPU float32/float64 tensor without NaN/Inf and return it
/// as a float64 matrix: the first `row_dims` dimensions are flattened into rows, the rest
/// into columns. `fn` and `arg` name the caller in messages ("deadspec.gram", "x").
HostMatrix host_matrix(const TensorView& v, std::int64_t row_dims, const char* fn,
                       const char* arg);

/// Throws std::overflow_error naming `fn` if the result holds Inf/NaN (finite inputs whose
/// products overflow float64): never hand back a silently wrong number.
const RowMatrixXd& check_finite_result(const RowMatrixXd& r, const char* fn);

/// Throws DeviceError unless v is on the CPU, DTypeError unless it is float32/float64.
void check_cpu_float(const TensorView& v, const char* fn, const char* arg);

// -- BLAS/LAPACK (or Eigen when the build has none) --------------------------------------

/// alpha·X·Xᵀ of a row-major rows×cols X (full symmetric result).
RowMatrixXd gram_rows(const double* x, std::int64_t rows, std::int64_t cols, double alpha);
/// alpha·Xᵀ·X of a row-major rows×cols X (full symmetric result).
RowMatrixXd gram_cols(const double* x, std::int64_t rows, std::int64_t cols, double alpha);
/// C (m×n, row-major, ldc = n) = A·Bᵀ with A row-major m×k, B row-major n×k (lda = ldb = k).
void gemm_nt(const double* a, const double* b, std::int64_t m, std::int64_t n, std::int64_t k,
             double* c);
/// C += alpha·X·Xᵀ, lower triangle only, X row-major rows×cols, C row-major rows×rows.
void syrk_rows_accumulate(const double* x, std::int64_t rows, std::int64_t cols, double alpha,
                          RowMatrixXd& c);
/// Copy the lower triangle of a square row-major matrix to the upper one.
void symmetrize_from_lower(RowMatrixXd& c);

/// f(i, j) for every i < j of an n×n matrix (every (i, j) unless `strict_upper`), by 64×64
/// tiles: a pass that reads a(j, i) beside a(i, j) of a row-major matrix then touches a column
/// of a tile, which stays in cache, instead of a column of the matrix at a stride of n doubles.
template <typename F>
void for_tiles(std::int64_t n, bool strict_upper, F&& f) {
    constexpr std::int64_t kTile = 64;
    for (std::int64_t ib = 0; ib < n; ib += kTile) {
        const std::int64_t ie = std::min(n, ib + kTile);
        for (std::int64_t jb = strict_upper ? ib : 0; jb < n; jb += kTile) {
            const std::int64_t je = std::min(n, jb + kTile);
            for (std::int64_t i = ib; i < ie; ++i)
                for (std::int64_t j = strict_upper ? std::max(jb, i + 1) : jb; j < je; ++j) f(i, j);
        }
    }
}

/// Matrices up to this size are decomposed by Eigen's solver even when LAPACK is available.
constexpr std::int64_t kEigenSolverMaxDim = 256;

/// Eigendecomposition of the lower (upper, with `upper`) triangle of `a` (column-major,
/// overwritten with the eigenvectors when `vectors`). Ascending eigenvalues in `w`. Returns
/// LAPACK's info. `fn` names the caller in messages.
int syevd(Eigen::MatrixXd& a, Eigen::VectorXd& w, bool vectors,
          const char* fn = "deadspec.sym_eig", bool upper = false);
/// Descending eigendecomposition of an owned column-major matrix (its lower triangle read, or
/// its upper one with `upper`).
/// \throws std::overflow_error naming `fn` if an eigenvalue's magnitude exceeds float64.
SymEigResult sym_eig_owned(Eigen::MatrixXd work, bool vectors, const char* fn,
                           bool upper = false);
/// sym_eig_owned of the lower triangle of a row-major n×n `a`: a plain copy is the upper
/// triangle of the column-major matrix, which LAPACK reads as well (no transposed copy).
SymEigResult sym_eig_rowmajor(const double* a, std::int64_t n, bool vectors, const char* fn);
/// max over i > j of |a_ij − a_ji| for a row-major n×n `a`, by cache-sized tiles.
double max_asymmetry(const double* a, std::int64_t n);
/// C (m×n, row-major, ldc = n) = Aᵀ·B with A row-major k×m (leading dimension lda) and
/// B row-major k×n (ldb = n).
void gemm_tn(const double* a, std::int64_t lda, const double* b, std::int64_t m, std::int64_t n,
             std::int64_t k, double* c);

const char* lapack_backend_name();
std::string blas_config();
/// The core's thread count: the user's setting, or OpenBLAS's own (one per core) in auto mode.
int blas_num_threads();
/// Fix OpenBLAS's threads (n >= 1).
void blas_set_num_threads(int n);
/// Return to auto mode, the default (see blas.cpp, "Threads").
void blas_set_threads_auto();
/// OpenBLAS's thread count at this moment (what auto mode chose last).
int blas_threads_in_use();
/// a·b·c as a double (a flop count).
inline double flops3(std::int64_t a, std::int64_t b, std::int64_t c) {
    return static_cast<double>(a) * static_cast<double>(b) * static_cast<double>(c);
}

/// Scope of one BLAS/LAPACK call of about `flops` work. In auto mode, it sets OpenBLAS's
/// threads from what earlier calls saw of the machine's contention, and watches this one
/// (blas.cpp, "Threads").
class BlasThreads {
  public:
    explicit BlasThreads(double flops);
    ~BlasThreads();
    BlasThreads(const BlasThreads&) = delete;
    BlasThreads& operator=(const BlasThreads&) = delete;

  private:
    int threads_ = 0;  // 0: not watched
    std::int64_t wall0_ = 0, delay0_ = 0;
};

/// Scope of a parallel region whose workers() threads each make their own BLAS calls: while one
/// is alive every BLAS call runs single-threaded in its calling thread (BlasThreads scopes change
/// nothing). workers(): the user's thread count, or in auto mode all of OpenBLAS's threads (auto
/// mode's contention hold is not applied: blas.cpp), at most `max_workers` and the cores.
class BlasWorkers {
  public:
    explicit BlasWorkers(int max_workers);
    ~BlasWorkers();
    BlasWorkers(const BlasWorkers&) = delete;
    BlasWorkers& operator=(const BlasWorkers&) = delete;
    int workers() const { return workers_; }

  private:
    int workers_ = 1;
};

/// Threads for `work` units of element-wise work: 1 below `min_work`, else the core's thread
/// count in use (shared with OpenBLAS: 1 while auto mode sees the machine oversubscribed), at
/// most `max_parts`.
inline int worker_threads(std::int64_t work, std::int64_t min_work, std::int64_t max_parts) {
    if (work < min_work || max_parts < 2) return 1;
    const int hw = std::max(1u, std::thread::hardware_concurrency());
    const int cap = std::max(1, std::min(hw, threads_in_use()));
    return static_cast<int>(std::min<std::int64_t>(cap, max_parts));
}

/// Run f(r0, r1) over [0, rows) split into `threads` contiguous ranges; the calling thread takes
/// the first. An exception from any range is rethrown on the caller after all have joined.
template <typename F>
void parallel_rows(std::int64_t rows, int threads, F&& f) {
    if (threads <= 1 || rows < 2) {
        f(std::int64_t(0), rows);
        return;
    }
    const std::int64_t chunk = (rows + threads - 1) / threads;
    std::vector<std::thread> pool;
    std::vector<std::exception_ptr> errors(static_cast<std::size_t>(threads));
    for (int t = 1; t < threads; ++t) {
        const std::int64_t r0 = t * chunk, r1 = std::min(rows, r0 + chunk);
        if (r0 >= r1) break;
        pool.emplace_back([&, t, r0, r1] {
            try {
                f(r0, r1);
            } catch (...) {
                errors[static_cast<std::size_t>(t)] = std::current_exception();
            }
        });
    }
    try {
        f(std::int64_t(0), std::min(rows, chunk));
    } catch (...) {
        errors[0] = std::current_exception();
    }
    for (auto& th : pool) th.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace deadspec::detail
