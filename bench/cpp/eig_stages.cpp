// SPDX-License-Identifier: Apache-2.0
// Per-stage times of the eigenvalues-only path (cpp/src/band_reduce.cpp, band_tridiag.cpp)
// against LAPACK's drivers and stages, in one process: bench/README.md, "Spectra".
//
//   deadspec_eig_stages N [KD,KD,...] [REPEATS]
//
// A = X·Xᵀ/N with X N×N Gaussian. Each time is the best of REPEATS (default 3). "own" rows run
// the core's two-stage path with a team of 1 and of 2 threads (OpenBLAS single-threaded
// inside, as in the core); LAPACK rows use OpenBLAS with its own thread count. dw = max|w −
// w_dsyevd| / max|w_dsyevd|. Unset OPENBLAS_CORETYPE (bench/README.md).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <Eigen/Core>

#include "detail/band_tridiag.hpp"
#include "detail/blas_names.hpp"
#include "detail/core.hpp"

extern "C" {
void DS_BLAS(dsytrd_sy2sb_)(const char*, const blasint*, const blasint*, double*, const blasint*,
                            double*, const blasint*, double*, double*, const blasint*, blasint*,
                            std::size_t);
void DS_BLAS(dsytrd_sb2st_)(const char*, const char*, const char*, const blasint*,
                            const blasint*, double*, const blasint*, double*, double*, double*,
                            const blasint*, double*, const blasint*, blasint*, std::size_t,
                            std::size_t, std::size_t);
void DS_BLAS(dsterf_)(const blasint*, double*, double*, blasint*);
}

namespace {
using deadspec::detail::BlasOneThread;
using deadspec::detail::Team;
using clk = std::chrono::steady_clock;

int g_repeats = 3;

template <typename F>
double best_of(F&& f) {
    double best = 1e300;
    for (int r = 0; r < g_repeats; ++r) {
        const auto t0 = clk::now();
        f();
        best = std::min(best, std::chrono::duration<double>(clk::now() - t0).count());
    }
    return best;
}

double rel_diff(const Eigen::VectorXd& w, const Eigen::VectorXd& ref) {
    return (w - ref).cwiseAbs().maxCoeff() / ref.cwiseAbs().maxCoeff();
}

// LAPACK's own stages at band width kd: dsytrd_sy2sb, dsytrd_sb2st, dsterf.
void lapack_stages(const Eigen::MatrixXd& a0, blasint n, blasint kd) {
    blasint ldab = kd + 1, info = 0, lwork = -1;
    double query = 0;
    std::vector<double> ab(static_cast<std::size_t>((kd + 1) * n)), tau(n), d(n), e(n);
    DS_BLAS(dsytrd_sy2sb_)("L", &n, &kd, nullptr, &n, ab.data(), &ldab, tau.data(), &query,
                           &lwork, &info, 1);
    lwork = static_cast<blasint>(query);
    std::vector<double> work(static_cast<std::size_t>(lwork));
    Eigen::MatrixXd a;
    const double t1 = best_of([&] {
        a = a0;
        DS_BLAS(dsytrd_sy2sb_)("L", &n, &kd, a.data(), &n, ab.data(), &ldab, tau.data(),
                               work.data(), &lwork, &info, 1);
    });
    blasint lh = 4 * n, lw = (2 * kd + 1) * n + kd;
    std::vector<double> hous(static_cast<std::size_t>(lh)), wk(static_cast<std::size_t>(lw));
    const double t2 = best_of([&] {
        std::vector<double> abc = ab;
        DS_BLAS(dsytrd_sb2st_)("Y", "N", "L", &n, &kd, abc.data(), &ldab, d.data(), e.data(),
                               hous.data(), &lh, wk.data(), &lw, &info, 1, 1, 1);
    });
    const double t3 = best_of([&] {
        std::vector<double> dd = d, ee = e;
        DS_BLAS(dsterf_)(&n, dd.data(), ee.data(), &info);
    });
    std::printf("  LAPACK      dsytrd_sy2sb %.4f  dsytrd_sb2st %.4f  dsterf %.4f  sum %.4f\n",
                t1, t2, t3, t1 + t2 + t3);
}

// The core's stages at band width kd on `threads` threads; returns the eigenvalues.
Eigen::VectorXd own_stages(const Eigen::MatrixXd& a0, std::int64_t n, std::int64_t kd,
                           int threads, const Eigen::VectorXd& ref) {
    // The whole path first (its stage 1 includes the scaling pass, its allocations and the
    // team's start; the copy of the input left out), with no other team alive.
    Eigen::MatrixXd a;
    Eigen::VectorXd w;
    double t3 = 1e300, total = 1e300;
    for (int r = 0; r < g_repeats; ++r) {
        a = a0;
        deadspec::detail::TwoStageTimes tt;
        deadspec::detail::syev_values_two_stage(a, true, w, kd, threads, &tt);
        t3 = std::min(t3, tt.sterf);
        total = std::min(total, tt.band + tt.chase + tt.sterf);
    }
    BlasOneThread serial;
    Team team(threads);
    std::vector<double> ab(static_cast<std::size_t>((kd + 1) * n)), d(n), e(n);
    const double t1 = best_of([&] {
        a = a0;
        deadspec::detail::reduce_to_band_upper(a.data(), n, n, kd, ab.data(), team);
    });
    const double t2 = best_of([&] {
        deadspec::detail::band_to_tridiagonal(ab.data(), kd + 1, n, kd, team, d.data(),
                                              e.data());
    });
    std::printf("  own T=%d    stage 1 %.4f  chase %.4f  dsterf %.4f  total %.4f  dw %.1e\n",
                threads, t1, t2, t3, total, rel_diff(w, ref));
    return w;
}
}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s N [KD,KD,...] [REPEATS]\n", argv[0]);
        return 2;
    }
    const int n = std::atoi(argv[1]);
    std::vector<int> kds;
    std::string list = argc > 2 ? argv[2] : "32";
    for (char* p = std::strtok(list.data(), ","); p; p = std::strtok(nullptr, ","))
        kds.push_back(std::atoi(p));
    if (argc > 3) g_repeats = std::max(1, std::atoi(argv[3]));
    std::mt19937 gen(static_cast<unsigned>(n));
    std::normal_distribution<double> normal;
    Eigen::MatrixXd x(n, n);
    for (Eigen::Index i = 0; i < x.size(); ++i) x.data()[i] = normal(gen);
    const Eigen::MatrixXd a0 = x * x.transpose() / n;
    std::printf("n = %d, OpenBLAS threads %d, best of %d\n", n, deadspec::threads_in_use(),
                g_repeats);
    Eigen::VectorXd ref(n), w(n);
    Eigen::MatrixXd a;
    const double t_d = best_of([&] {
        a = a0;
        DS_BLAS(LAPACKE_dsyevd)(LAPACK_COL_MAJOR, 'N', 'L', n, a.data(), n, ref.data());
    });
    const double t_2 = best_of([&] {
        a = a0;
        DS_BLAS(LAPACKE_dsyevd_2stage)(LAPACK_COL_MAJOR, 'N', 'L', n, a.data(), n, w.data());
    });
    std::printf("  LAPACKE_dsyevd %.4f  LAPACKE_dsyevd_2stage %.4f (dw %.1e)\n", t_d, t_2,
                rel_diff(w, ref));
    for (int kd : kds) {
        std::printf("kd = %d\n", kd);
        lapack_stages(a0, n, kd);
        const Eigen::VectorXd w1 = own_stages(a0, n, kd, 1, ref);
        const Eigen::VectorXd w2 = own_stages(a0, n, kd, 2, ref);
        std::printf("  own T=1 and T=2 values bitwise equal: %s\n",
                    std::memcmp(w1.data(), w2.data(), sizeof(double) * n) == 0 ? "yes" : "NO");
    }
    return 0;
}
