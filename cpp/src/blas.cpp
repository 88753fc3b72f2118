// SPDX-License-Identifier: Apache-2.0
// BLAS/LAPACK wrappers: OpenBLAS (PyPI scipy-openblas32 or the system's) or Eigen.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <mutex>

#include <dirent.h>

#include <Eigen/Eigenvalues>

#include "detail/band_tridiag.hpp"
#include "detail/blas_names.hpp"
#include "detail/core.hpp"

namespace deadspec::detail {

void symmetrize_from_lower(RowMatrixXd& c) {
    // (by tiles: an element-wise transposed copy took as long as half the dsyrk before it at
    // n = 2048)
    double* p = c.data();
    const std::int64_t n = c.rows();
    for_tiles(n, true, [p, n](std::int64_t i, std::int64_t j) { p[i * n + j] = p[j * n + i]; });
}

namespace {
// Lower triangle of C = alpha·X·Xᵀ + beta·C (alpha·XᵀX + beta·C with `trans`), X row-major
// rows×cols. With beta = 0 the BLAS writes C without reading it (no zeroing pass needed);
// Eigen's path adds to C, which the caller has then zeroed.
void syrk_lower(const double* x, std::int64_t rows, std::int64_t cols, bool trans, double alpha,
                double beta, RowMatrixXd& c) {
    if (rows == 0 || cols == 0) return;
#ifdef DEADSPEC_HAVE_LAPACK
    const std::int64_t n = trans ? cols : rows, k = trans ? rows : cols;
    BlasThreads threads(flops3(n, n, k));
    DS_BLAS(cblas_dsyrk)(CblasRowMajor, CblasLower, trans ? CblasTrans : CblasNoTrans,
                         to_blasint(n), to_blasint(k), alpha, x, to_blasint(cols), beta,
                         c.data(), to_blasint(n));
#else
    (void)beta;
    Eigen::Map<const RowMatrixXd> m(x, rows, cols);
    if (trans)
        c.selfadjointView<Eigen::Lower>().rankUpdate(m.transpose(), alpha);
    else
        c.selfadjointView<Eigen::Lower>().rankUpdate(m, alpha);
#endif
}

// The full symmetric alpha·X·Xᵀ (alpha·XᵀX with `trans`).
RowMatrixXd gram_of(const double* x, std::int64_t rows, std::int64_t cols, bool trans,
                    double alpha) {
    const std::int64_t n = trans ? cols : rows;
    RowMatrixXd c(n, n);
#ifdef DEADSPEC_HAVE_LAPACK
    if (rows == 0 || cols == 0) c.setZero();  // else beta = 0: the lower triangle is written
#else
    c.setZero();
#endif
    syrk_lower(x, rows, cols, trans, alpha, 0.0, c);
    symmetrize_from_lower(c);
    return c;
}
}  // namespace

void syrk_rows_accumulate(const double* x, std::int64_t rows, std::int64_t cols, double alpha,
                          RowMatrixXd& c) {
    syrk_lower(x, rows, cols, false, alpha, 1.0, c);
}

RowMatrixXd gram_rows(const double* x, std::int64_t rows, std::int64_t cols, double alpha) {
    return gram_of(x, rows, cols, false, alpha);
}

RowMatrixXd gram_cols(const double* x, std::int64_t rows, std::int64_t cols, double alpha) {
    return gram_of(x, rows, cols, true, alpha);
}

void gemm_tn(const double* a, std::int64_t lda, const double* b, std::int64_t m, std::int64_t n,
             std::int64_t k, double* c) {
#ifdef DEADSPEC_HAVE_LAPACK
    BlasThreads threads(2.0 * flops3(m, n, k));
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
    BlasThreads threads(2.0 * flops3(m, n, k));
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

int syevd(Eigen::MatrixXd& a, Eigen::VectorXd& w, bool vectors, const char* fn, bool upper) {
    const auto n = a.rows();
    w.resize(n);
    // Eigen's solver reads the lower triangle: mirror a given upper one (n <= 256 there).
    const auto eigen_solver = [&] {
        if (upper)
            for (Eigen::Index j = 0; j < n; ++j)
                for (Eigen::Index i = j + 1; i < n; ++i) a(i, j) = a(j, i);
        return syevd_eigen(a, w, vectors);
    };
#ifdef DEADSPEC_HAVE_LAPACK
    // Small problems go to Eigen's single-threaded solver: it is as fast as one LAPACK thread up
    // to n = 256 (bench/README.md), and it never wakes OpenBLAS's thread pool, whose
    // busy-waiting threads contend with torch's OpenMP pool on small machines (a 256² spectrum
    // measured 1.45 s through 2 OpenBLAS threads right after torch work, 0.02 s alone).
    if (n <= kEigenSolverMaxDim) return eigen_solver();
    BlasThreads threads(flops3(n, n, n) * (vectors ? 4.0 : 4.0 / 3.0));
    // Eigenvalues only: the two-stage reduction (dense -> band by matrix-matrix work, band ->
    // tridiagonal by a bulge chase pipelined over the threads in use, band_tridiag.cpp) where
    // it is faster than dsyevd, whose half of level-2 dsymv is memory-bound (bench/README.md,
    // "Spectra"). LAPACK has no two-stage driver with vectors.
    if (!vectors) {
        const std::int64_t kd = two_stage_band_width(n, fn);
        if (kd > 0) return syev_values_two_stage(a, upper, w, kd, blas_threads_in_use());
    }
    const auto info = DS_BLAS(LAPACKE_dsyevd)(LAPACK_COL_MAJOR, vectors ? 'V' : 'N',
                                              upper ? 'U' : 'L', to_blasint(n), a.data(),
                                              to_blasint(n), w.data());
    if (info < 0) throw Error(concat("deadspec: LAPACKE_dsyevd rejected argument ", -info));
    return static_cast<int>(info);
#else
    (void)fn;
    return eigen_solver();
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

// ---- Threads ----------------------------------------------------------------------------------
// OpenBLAS's threads meet at a spinning barrier inside every level-2 call of a LAPACK solver.
// When another process holds a core, the barrier waits for a descheduled thread each time: a
// 4096² spectrum measured 19 s with 2 threads next to two busy processes, about 1.8 s alone
// (bench/README.md, "Threads"). The default ("auto") therefore watches the calling thread's run
// delay (time it was runnable but had no CPU, /proc/thread-self/schedstat) over each call of
// 20 Mflop or more made with all threads: above 20% of the call's wall time, the machine is
// oversubscribed and OpenBLAS gets 1 thread for a hold period (0.1 s, doubling each time all
// threads are tried again and still contended, at most 64 s); otherwise all of its threads.
// Only the core's own calls are watched: torch's work in between (its own pool) is not ours
// to judge. A count set by the user (set_num_threads, DEADSPEC_NUM_THREADS) is never changed.
namespace {
std::mutex g_threads_mutex;
int g_user_threads = 0;  // 0: auto
[[maybe_unused]] int g_applied = 0;  // what OpenBLAS is set to now (0: untouched)
std::int64_t g_hold_until = 0, g_hold_ns = 0, g_last_probe = 0;
int g_regions = 0;  // open BlasWorkers scopes

int initial_threads() {
#if defined(DEADSPEC_BLAS_PREFIX)
    static const int n = std::max(1, DS_BLAS(openblas_get_num_threads)());
    return n;
#else
    return 1;
#endif
}

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Run delay of the calling thread in ns; false where the kernel does not report it.
bool run_delay_ns(std::int64_t& delay) {
    std::FILE* f = std::fopen("/proc/thread-self/schedstat", "r");
    if (!f) return false;
    long long run = 0, wait = 0;
    const bool ok = std::fscanf(f, "%lld %lld", &run, &wait) == 2;
    std::fclose(f);
    delay = wait;
    return ok;
}

// Runnable threads of other processes now: the machine's count (/proc/loadavg, "running/total")
// less this process's own threads in state R. -1 where it cannot be read. In a container the
// machine's count may include processes on cores this one cannot use; it only decides when to
// try all threads again after this process has itself waited for a CPU.
[[maybe_unused]] int others_running() {
    std::FILE* f = std::fopen("/proc/loadavg", "r");
    if (!f) return -1;
    double l1 = 0, l5 = 0, l15 = 0;
    int running = 0, total = 0;
    const bool ok = std::fscanf(f, "%lf %lf %lf %d/%d", &l1, &l5, &l15, &running, &total) == 5;
    std::fclose(f);
    if (!ok) return -1;
    DIR* dir = opendir("/proc/self/task");
    if (!dir) return -1;
    int own = 0;
    while (const dirent* e = readdir(dir)) {
        if (e->d_name[0] == '.') continue;
        char path[320];
        std::snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
        std::FILE* t = std::fopen(path, "r");
        if (!t) continue;
        char buf[256];
        const std::size_t len = std::fread(buf, 1, sizeof buf - 1, t);
        std::fclose(t);
        buf[len] = '\0';
        const char* paren = std::strrchr(buf, ')');  // "pid (comm) S ...": comm may hold spaces
        if (paren && paren[1] == ' ' && paren[2] == 'R') ++own;
    }
    closedir(dir);
    return std::max(0, running - own);
}

// In auto mode, the thread count for the next call; the caller holds g_threads_mutex.
[[maybe_unused]] int auto_threads_locked(std::int64_t now) {
    constexpr std::int64_t kProbeEveryNs = 64'000'000'000;
    const int all = initial_threads();
    if (all == 1 || now < g_hold_until) return now < g_hold_until ? 1 : all;
    // The hold ran out after contention was seen. While other processes are still runnable,
    // hold on (same period; an actual try with all threads at least every 64 s) rather than
    // pay for a contended call to find out.
    if (g_hold_ns > 0 && now - g_last_probe < kProbeEveryNs && others_running() > 0) {
        g_hold_until = now + g_hold_ns;
        return 1;
    }
    g_last_probe = now;
    return all;
}

// What the calling thread's run delay said over one call made with `threads` threads.
void observe_locked(int threads, std::int64_t t0, std::int64_t d0, std::int64_t t1,
                    std::int64_t d1) {
    constexpr std::int64_t kFirstHoldNs = 100'000'000, kMaxHoldNs = 64'000'000'000;
    if (threads <= 1) return;  // nothing learnt about more threads: the hold runs out on its own
    // Measured (bench/README.md, "Threads"): 0.00-0.02 of a 2-thread call alone, 0.27-0.64 next
    // to one busy process (when the call ran 5-10x slower than with 1 thread).
    if ((d1 - d0) * 5 > (t1 - t0)) {
        g_hold_ns = g_hold_ns ? std::min(2 * g_hold_ns, kMaxHoldNs) : kFirstHoldNs;
        g_hold_until = t1 + g_hold_ns;
    } else {
        g_hold_ns = 0;
    }
}
}  // namespace

BlasThreads::BlasThreads(double flops) {
#if defined(DEADSPEC_BLAS_PREFIX)
    // Calls under ~20 Mflop take < 1 ms: not worth two reads of schedstat, and too short to
    // tell contention from noise. They run with whatever count is set.
    if (flops < 2e7) return;
    std::lock_guard<std::mutex> lock(g_threads_mutex);
    if (g_user_threads != 0 || g_regions > 0 || !run_delay_ns(delay0_)) return;
    wall0_ = now_ns();
    threads_ = auto_threads_locked(wall0_);
    if (threads_ != g_applied) {
        DS_BLAS(openblas_set_num_threads)(threads_);
        g_applied = threads_;
    }
#else
    (void)flops;
#endif
}

BlasThreads::~BlasThreads() {
    if (threads_ == 0) return;
    std::int64_t delay = 0;
    if (!run_delay_ns(delay)) return;
    const std::int64_t now = now_ns();
    std::lock_guard<std::mutex> lock(g_threads_mutex);
    if (g_user_threads == 0) observe_locked(threads_, wall0_, delay0_, now, delay);
}

BlasWorkers::BlasWorkers(int max_workers) {
#if defined(DEADSPEC_BLAS_PREFIX)
    std::lock_guard<std::mutex> lock(g_threads_mutex);
    // All threads, held or not: the workers meet only at a few sleeping barriers and take their
    // tasks from a shared counter, so they lose no more than their share to other processes
    // (auto mode's hold is for OpenBLAS's spinning barriers inside LAPACK calls), and in a loop
    // after a torch step they start while torch's OpenMP threads still spin, which a watch would
    // read as contention.
    workers_ = g_regions++ == 0 ? (g_user_threads != 0 ? g_user_threads : initial_threads()) : 1;
    const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    workers_ = std::clamp(workers_, 1, std::max(1, std::min(max_workers, hw)));
    if (g_applied != 1) {
        DS_BLAS(openblas_set_num_threads)(1);
        g_applied = 1;
    }
#else
    (void)max_workers;
#endif
}

BlasWorkers::~BlasWorkers() {
#if defined(DEADSPEC_BLAS_PREFIX)
    std::lock_guard<std::mutex> lock(g_threads_mutex);
    // A user's fixed count is never re-applied by BlasThreads: restore it here.
    if (--g_regions == 0 && g_user_threads > 1) {
        DS_BLAS(openblas_set_num_threads)(g_user_threads);
        g_applied = g_user_threads;
    }
#endif
}

int blas_num_threads() {
    std::lock_guard<std::mutex> lock(g_threads_mutex);
    return g_user_threads != 0 ? g_user_threads : initial_threads();
}

namespace {
// n >= 1: fixed; 0: auto.
void set_threads_mode(int n) {
    const int all = initial_threads();  // read OpenBLAS's own count before changing it
    std::lock_guard<std::mutex> lock(g_threads_mutex);
    g_user_threads = n;
#if defined(DEADSPEC_BLAS_PREFIX)
    const int apply = n != 0 ? n : all;
    DS_BLAS(openblas_set_num_threads)(apply);
    g_applied = apply;
    g_hold_until = g_hold_ns = g_last_probe = 0;
#else
    (void)all;
#endif
}
}  // namespace

int blas_threads_in_use() {
#if defined(DEADSPEC_BLAS_PREFIX)
    return DS_BLAS(openblas_get_num_threads)();
#else
    return 1;
#endif
}

void blas_set_num_threads(int n) {
    if (n < 1) throw std::invalid_argument(concat("deadspec.set_num_threads: n must be >= 1, got ", n));
    set_threads_mode(n);
}

void blas_set_threads_auto() { set_threads_mode(0); }

const char* lapack_backend_name() {
#if defined(DEADSPEC_BLAS_PREFIX)
    return "lapack-syevd (scipy-openblas32); eigen for n <= 256; two-stage with a pipelined bulge "
           "chase for values, n >= 1024";
#elif defined(DEADSPEC_SYSTEM_LAPACK)
    return "lapack-syevd (system); eigen for n <= 256; two-stage with a pipelined bulge chase for "
           "values, n >= 1024";
#else
    return "eigen";
#endif
}

}  // namespace deadspec::detail
