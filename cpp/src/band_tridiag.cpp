// SPDX-License-Identifier: Apache-2.0
// Eigenvalues by the two-stage tridiagonal reduction: stage 1 (dense -> band of kd subdiagonals,
// band_reduce.cpp), stage 2 (band -> tridiagonal, "bulge chasing", here), then LAPACK's dsterf,
// on a team of threads (detail/team.hpp) with OpenBLAS single-threaded.
//
// Stage 2 is a graph of small tasks. LAPACK's dsytrd_sb2st runs it as OpenMP tasks, and on one
// thread in an OpenBLAS built without OpenMP (the scipy-openblas32 wheel), where it took a
// quarter of a 4096² eigenvalue computation (bench/README.md, "Spectra"). This file runs the
// same graph on the team, with the task kernel of detail/band_kernels.hpp.
//
// The graph (Haidar, Ltaief and Dongarra, SC'11; LAPACK's dsytrd_sb2st). Sweep s = 1..n−1
// annihilates column s below its first subdiagonal. Its task 1 generates a reflector from
// column s and applies it from both sides to the diagonal block that follows; then, in turn,
// an even task applies the last reflector to the kd×kd block below that diagonal block (which
// creates a bulge) and generates the next reflector from the bulge's first column, and an odd
// task applies that reflector from both sides to the next diagonal block, until the sweep
// reaches the end of the matrix. A sweep's tasks run in order; task m of sweep s may start once
// sweep s − 1 has done its task m + 2 (LAPACK's SHIFT = 3): consecutive sweeps then touch
// disjoint blocks and run at the same time a few blocks apart. Each sweep is cut into one run
// of tasks per member (run_member). Each task does the same arithmetic on the same data, and
// tasks that touch the same data run in the same order, whatever the thread count: the result
// is the same bit for bit.
#include "detail/band_tridiag.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "detail/band_kernels.hpp"
#include "detail/blas_names.hpp"
#include "detail/core.hpp"
#include "detail/team.hpp"

#ifdef DEADSPEC_HAVE_LAPACK
// LAPACK's Fortran routine (the scipy-openblas32 wheel exports it as scipy_dsterf_).
extern "C" void DS_BLAS(dsterf_)(const blasint* n, double* d, double* e, blasint* info);
#endif

namespace deadspec::detail {

#ifdef DEADSPEC_HAVE_LAPACK
namespace {

// One task of the bulge chase, in LAPACK's (1-based) terms: kernel type (1: first reflector
// of a sweep, 2: off-diagonal block, 3: diagonal block), the rows st..ed it works on, and
// whether it is the sweep's last.
struct Task {
    blasint type, st, ed;
    bool last;
};

Task task_of(blasint sweep, blasint m, blasint n, blasint kd) {
    Task t{};
    if (m % 2 == 0) {
        const blasint col = (m / 2) * kd + sweep;
        t = {2, col - kd + 1, std::min(col, n), col >= n - 1};
    } else {
        const blasint col = ((m + 1) / 2) * kd + sweep;
        t.type = m == 1 ? 1 : 3;
        t.st = col - kd + 1;
        t.ed = std::min(col, n);
        t.last = t.st >= t.ed - 1 && t.ed == n;
    }
    return t;
}

// Tasks done in a sweep (1..m done), kAll once it is finished; one per cache line (each is
// written by one member at a time and read by the others).
constexpr blasint kAll = std::numeric_limits<blasint>::max();
struct alignas(64) SweepDone {
    std::atomic<blasint> tasks{0};
};

struct Chase {
    blasint n, kd, lda;
    int threads;
    double* a;    // (2kd + 1) × n band work array: kd + 1 rows of the band, kd rows of bulge
    double* v;    // reflectors, 2n (two halves, by sweep parity, as in LAPACK)
    double* tau;  // their scalars, 2n
    std::vector<SweepDone> done;  // per sweep (index 0 unused)
    std::vector<double> work;     // kd + 1 per member, work_stride apart
    std::size_t work_stride;
};

// The kernel compiled for the baseline ISA and, chosen at run time, for AVX2 with FMA: 1.2-1.3
// times faster at n = 2048 on the reference machine (an AVX-512 build was not faster). Fused
// multiply-adds round differently, so the values depend on the CPU, never on the thread count.
using TaskFn = void (*)(int, std::int64_t, std::int64_t, std::int64_t, std::int64_t, std::int64_t,
                        double*, std::int64_t, double*, double*, double*);
void task_baseline(int type, std::int64_t st, std::int64_t ed, std::int64_t sweep, std::int64_t n,
                   std::int64_t kd, double* a, std::int64_t lda, double* v, double* tau,
                   double* w) {
    band::task(type, st, ed, sweep, n, kd, a, lda, v, tau, w);
}
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
__attribute__((target("avx2,fma"), flatten)) void task_avx2(
    int type, std::int64_t st, std::int64_t ed, std::int64_t sweep, std::int64_t n,
    std::int64_t kd, double* a, std::int64_t lda, double* v, double* tau, double* w) {
    band::task(type, st, ed, sweep, n, kd, a, lda, v, tau, w);
}
#endif

TaskFn pick_task() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2) return task_avx2;
#endif
    return task_baseline;
}

blasint tasks_in_sweep(blasint s, blasint n, blasint kd) {
    blasint m = 1;
    while (!task_of(s, m, n, kd).last) ++m;
    return m;
}

// Wait until sweep s has done `need` tasks.
void wait_for(const SweepDone& d, blasint need) {
    if (d.tasks.load(std::memory_order_acquire) >= need) return;
    spin_wait([&] { return d.tasks.load(std::memory_order_acquire) >= need; });
}

// Member t's share: of every sweep, the t-th of `threads` consecutive runs of tasks (equal in
// number). A sweep's runs follow each other down the band, so each member keeps working on
// its own stretch of the band (in its core's cache) and hands the sweep on at the boundary.
// The counters are shared cache lines: a member reads one only when the task it waits for is
// not behind it already (its own, or before its own run of the previous sweep), and publishes
// only what another member can wait for: the first tasks of its run (the member before needs
// them for the next sweep: its run there ends at most one task past this run's start) and the
// run's last task (the hand-over).
void run_member(Chase& c, int t) {
    double* work = c.work.data() + static_cast<std::size_t>(t) * c.work_stride;
    const TaskFn task = pick_task();
    blasint known = 1;  // tasks 1..known−1 of the previous sweep are done
    for (blasint s = 1; s <= c.n - 1; ++s) {
        const blasint total = tasks_in_sweep(s, c.n, c.kd);
        const blasint m0 = 1 + static_cast<blasint>(std::int64_t(total) * t / c.threads);
        const blasint m1 = 1 + static_cast<blasint>(std::int64_t(total) * (t + 1) / c.threads);
        SweepDone& mine = c.done[static_cast<std::size_t>(s)];
        const SweepDone& prev = c.done[static_cast<std::size_t>(s - 1)];
        if (m0 < m1 && m0 > 1) wait_for(mine, m0 - 1);  // the member before, this sweep
        for (blasint m = m0; m < m1; ++m) {
            if (s > 1 && m + 2 >= known) wait_for(prev, m + 2);
            const Task k = task_of(s, m, c.n, c.kd);
            task(k.type, k.st, k.ed, s, c.n, c.kd, c.a, c.lda, c.v, c.tau, work);
            if (k.last || m < m0 + 4 || m == m1 - 1)
                mine.tasks.store(k.last ? kAll : m, std::memory_order_release);
        }
        known = m0 < m1 ? m1 : 1;
    }
}

// The factor that brings the largest entry of the upper triangle of the column-major n×n `a`
// into [sqrt(smlnum), sqrt(bignum)] (1 if it is there), as dsyevd does before reducing; the
// matrix is multiplied by it.
double scale_into_range(double* a, std::int64_t n) {
    const double eps = std::numeric_limits<double>::epsilon();
    const double smlnum = std::numeric_limits<double>::min() / eps, bignum = 1.0 / smlnum;
    const double rmin = std::sqrt(smlnum), rmax = std::sqrt(bignum);
    double anrm = 0.0;
    for (std::int64_t j = 0; j < n; ++j)
        for (std::int64_t i = 0; i <= j; ++i) anrm = std::max(anrm, std::abs(a[j * n + i]));
    const double sigma = anrm > 0.0 && anrm < rmin ? rmin / anrm : anrm > rmax ? rmax / anrm : 1.0;
    if (sigma != 1.0)
        for (std::int64_t j = 0; j < n; ++j)
            for (std::int64_t i = 0; i <= j; ++i) a[j * n + i] *= sigma;
    return sigma;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

void band_to_tridiagonal(const double* ab, std::int64_t ldab, std::int64_t n, std::int64_t kd,
                         Team& team, double* d, double* e) {
    if (n <= 0) return;
    kd = std::max<std::int64_t>(0, std::min(kd, n - 1));
    const std::int64_t lda = 2 * kd + 1;
    const auto sz = [](std::int64_t v) { return static_cast<std::size_t>(v); };
    // The band with kd zero rows below it, where the bulges form.
    std::vector<double> a(sz(lda * n), 0.0);
    for (std::int64_t j = 0; j < n; ++j)
        std::memcpy(&a[sz(j * lda)], ab + j * ldab, sz(std::min(kd, n - 1 - j) + 1) * sizeof(double));
    if (kd >= 2) {
        std::vector<double> hous(sz(4 * n), 0.0);
        Chase c{to_blasint(n), to_blasint(kd), to_blasint(lda), team.size(), a.data(),
                hous.data() + 2 * n, hous.data(), {}, {}, 0};
        c.done = std::vector<SweepDone>(sz(n));
        // Each member's scratch on cache lines of its own (written in every task: a line
        // shared by two members cost a third of the chase's time at n = 2048).
        c.work_stride = sz((kd + 1 + 7) / 8 * 8 + 16);
        c.work.assign(sz(c.threads) * c.work_stride + 16, 0.0);
        team.run([&c](int t) { run_member(c, t); });
    }
    for (std::int64_t i = 0; i < n; ++i) d[i] = a[sz(i * lda)];
    for (std::int64_t i = 0; i + 1 < n; ++i) e[i] = kd >= 1 ? a[sz(i * lda + 1)] : 0.0;
}

int syev_values_two_stage(Eigen::MatrixXd& a, bool upper, Eigen::VectorXd& w, std::int64_t kd,
                          int threads, TwoStageTimes* times) {
    const std::int64_t n = a.rows();
    w.resize(n);
    if (n == 0) return 0;
    kd = std::max<std::int64_t>(1, std::min(kd, n - 1));
    auto t0 = std::chrono::steady_clock::now();
    if (!upper)  // the lower triangle is given: mirror it (stage 1 reads the upper one)
        for_tiles(n, true, [p = a.data(), n](std::int64_t i, std::int64_t j) {
            p[j * n + i] = p[i * n + j];
        });
    const double sigma = scale_into_range(a.data(), n);
    std::vector<double> e(static_cast<std::size_t>(n));
    {
        // OpenBLAS on one thread: the team's members call it at the same time (its pool serves
        // one caller at a time), and its idle threads would busy-wait on the team's cores. The
        // team ends with the chase (its idle members would spin through dsterf).
        BlasWorkers serial(1);  // every BLAS call on its calling thread
        Team team(std::max(1, threads));
        std::vector<double> ab(static_cast<std::size_t>((kd + 1) * n), 0.0);
        reduce_to_band_upper(a.data(), n, n, kd, ab.data(), team);
        if (times) times->band = seconds_since(t0);
        t0 = std::chrono::steady_clock::now();
        band_to_tridiagonal(ab.data(), kd + 1, n, kd, team, w.data(), e.data());
    }
    if (times) times->chase = seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    const blasint bn = to_blasint(n);
    blasint info = 0;
    DS_BLAS(dsterf_)(&bn, w.data(), e.data(), &info);
    if (times) times->sterf = seconds_since(t0);
    if (info < 0) throw Error(concat("deadspec: dsterf rejected argument ", -info));
    if (sigma != 1.0) w /= sigma;
    return static_cast<int>(info);
}
#endif  // DEADSPEC_HAVE_LAPACK

std::int64_t two_stage_band_width(std::int64_t n, const char* fn) {
    if (const char* env = std::getenv("DEADSPEC_EIG_BAND_KD"); env && *env) {
        char* end = nullptr;
        const long kd = std::strtol(env, &end, 10);
        if (*end != '\0' || !(kd == 0 || (kd >= 2 && kd <= 256)))
            throw std::invalid_argument(concat(fn, ": DEADSPEC_EIG_BAND_KD must be 0 (off) or a "
                                                   "band width from 2 to 256, got '",
                                               env, "'"));
        return kd;
    }
    // Measured through sym_eig on the reference machine (2 cores, bench/README.md, "Spectra"):
    // dsyevd is as fast up to n = 768; kd = 24 is the fastest band at n = 2048 (24, 32 and 48
    // within 1% at n = 3072); from there a wider band, 48 (40-48 best at n = 4096: stage 1's
    // products run faster with more columns, the chase costs more per sweep).
    if (n < kTwoStageMinDim) return 0;
    return n < 3072 ? 24 : 48;
}

}  // namespace deadspec::detail
