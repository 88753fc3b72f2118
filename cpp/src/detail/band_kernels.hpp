// SPDX-License-Identifier: Apache-2.0
// The task kernel of the bulge chase (band_tridiag.cpp): LAPACK's dsb2st_kernels for a lower
// band without the orthogonal factor, written out with the Householder helpers it calls
// (dlarfg, dlarfy, dlarfx). LAPACK's kernel reaches these through level-2 BLAS calls on
// kd-sized blocks, and OpenBLAS's level-2 calls do not scale over threads (two threads calling
// dsyr2 on 32×32 blocks took 2.3 times as long per call as one, bench/README.md), which held
// the pipelined chase to 1.45 times the speed of one thread. Private to the core.
//
// Storage: the band work array with leading dimension lda = 2kd + 1 (kd + 1 rows of the band,
// kd rows for the bulge) seen as a full matrix with leading dimension lda − 1 (LAPACK's trick):
// element (i, j), 0 <= i − j <= 2kd, 0-based, at a[i + j·(lda − 1)].
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

namespace deadspec::detail::band {

/// Σ x_i·y_i over i < n, in four interleaved partial sums (a fixed order: the same result for
/// the same data on any thread).
inline double dot(const double* x, const double* y, std::int64_t n) {
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; ++k) s[k] += x[i + k] * y[i + k];
    for (; i < n; ++i) s[0] += x[i] * y[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

/// ‖x‖₂ without overflow or underflow of the squares.
inline double norm2(const double* x, std::int64_t n) {
    double scale = 0.0;
    for (std::int64_t i = 0; i < n; ++i) scale = std::max(scale, std::abs(x[i]));
    if (scale == 0.0) return 0.0;
    double ssq = 0.0;
    const double inv = 1.0 / scale;
    for (std::int64_t i = 0; i < n; ++i) ssq += (x[i] * inv) * (x[i] * inv);
    return scale * std::sqrt(ssq);
}

/// dlarfg: the reflector H = I − tau·v·vᵀ, v = (1, x), with H·(alpha, x) = (beta, 0); alpha
/// becomes beta, x becomes v's tail (n − 1 entries).
inline void larfg(std::int64_t n, double& alpha, double* x, double& tau) {
    tau = 0.0;
    if (n <= 1) return;
    double xnorm = norm2(x, n - 1);
    if (xnorm == 0.0) return;
    double beta = -std::copysign(std::hypot(alpha, xnorm), alpha);
    const double safmin =
        std::numeric_limits<double>::min() / (0.5 * std::numeric_limits<double>::epsilon());
    int knt = 0;
    if (std::abs(beta) < safmin) {  // beta may be inaccurate: rescale (as dlarfg does)
        const double rsafmn = 1.0 / safmin;
        do {
            ++knt;
            for (std::int64_t i = 0; i < n - 1; ++i) x[i] *= rsafmn;
            beta *= rsafmn;
            alpha *= rsafmn;
        } while (std::abs(beta) < safmin && knt < 20);
        xnorm = norm2(x, n - 1);
        beta = -std::copysign(std::hypot(alpha, xnorm), alpha);
    }
    tau = (beta - alpha) / beta;
    const double scal = 1.0 / (alpha - beta);
    for (std::int64_t i = 0; i < n - 1; ++i) x[i] *= scal;
    for (int j = 0; j < knt; ++j) beta *= safmin;
    alpha = beta;
}

/// dlarfy (lower): C = H·C·H for the symmetric n×n C (lower triangle, leading dimension ld),
/// H = I − tau·v·vᵀ. `w`: n entries of scratch.
inline void larfy(std::int64_t n, const double* v, double tau, double* c, std::int64_t ld,
                  double* w) {
    if (tau == 0.0) return;
    std::fill(w, w + n, 0.0);
    for (std::int64_t j = 0; j < n; ++j) {  // w = C·v
        const double* cj = c + j * ld;
        const double vj = v[j];
        for (std::int64_t i = j + 1; i < n; ++i) w[i] += cj[i] * vj;
        w[j] += cj[j] * vj + dot(cj + j + 1, v + j + 1, n - j - 1);
    }
    const double alpha = -0.5 * tau * dot(w, v, n);
    for (std::int64_t i = 0; i < n; ++i) w[i] += alpha * v[i];
    for (std::int64_t j = 0; j < n; ++j) {  // C −= tau·(v·wᵀ + w·vᵀ)
        double* cj = c + j * ld;
        const double t1 = -tau * w[j], t2 = -tau * v[j];
        for (std::int64_t i = j; i < n; ++i) cj[i] += v[i] * t1 + w[i] * t2;
    }
}

/// C = H·C for the m×n C (leading dimension ld), H = I − tau·v·vᵀ (v: m entries).
inline void larf_left(std::int64_t m, std::int64_t n, const double* v, double tau, double* c,
                      std::int64_t ld) {
    if (tau == 0.0) return;
    for (std::int64_t j = 0; j < n; ++j) {
        double* cj = c + j * ld;
        const double t = -tau * dot(cj, v, m);
        for (std::int64_t i = 0; i < m; ++i) cj[i] += v[i] * t;
    }
}

/// C = C·H for the m×n C (leading dimension ld), H = I − tau·v·vᵀ (v: n entries). `w`: m
/// entries of scratch.
inline void larf_right(std::int64_t m, std::int64_t n, const double* v, double tau, double* c,
                       std::int64_t ld, double* w) {
    if (tau == 0.0) return;
    std::fill(w, w + m, 0.0);
    for (std::int64_t j = 0; j < n; ++j) {  // w = C·v
        const double* cj = c + j * ld;
        for (std::int64_t i = 0; i < m; ++i) w[i] += cj[i] * v[j];
    }
    for (std::int64_t j = 0; j < n; ++j) {
        double* cj = c + j * ld;
        const double t = -tau * v[j];
        for (std::int64_t i = 0; i < m; ++i) cj[i] += w[i] * t;
    }
}

/// One task of the chase (LAPACK's dsb2st_kernels, lower, 1-based st..ed as there): type 1
/// generates sweep's reflector from column st − 1 and applies it to the diagonal block
/// st..ed; type 3 applies the sweep's current reflector to that block; type 2 applies it to
/// the block below (rows ed+1..ed+kd), generates the next reflector from that block's first
/// column and applies it to the block's other columns. v and tau: 2n entries each (the
/// reflector of sweep s at (s − 1) mod 2 · n + its first row); w: kd entries of scratch.
inline void task(int type, std::int64_t st, std::int64_t ed, std::int64_t sweep, std::int64_t n,
                 std::int64_t kd, double* a, std::int64_t lda, double* v, double* tau,
                 double* w) {
    const std::int64_t ld = lda - 1;
    const auto at = [a, ld](std::int64_t i, std::int64_t j) -> double& {  // 1-based (i, j)
        return a[(i - 1) + (j - 1) * ld];
    };
    const std::int64_t half = ((sweep - 1) % 2) * n - 1;  // v[half + i]: row i's entry
    if (type == 1) {
        const std::int64_t lm = ed - st + 1;
        double* vv = v + half + st;
        vv[0] = 1.0;
        for (std::int64_t i = 1; i < lm; ++i) {
            vv[i] = at(st + i, st - 1);
            at(st + i, st - 1) = 0.0;
        }
        larfg(lm, at(st, st - 1), vv + 1, tau[half + st]);
    }
    if (type == 1 || type == 3) {
        larfy(ed - st + 1, v + half + st, tau[half + st], &at(st, st), ld, w);
        return;
    }
    const std::int64_t j1 = ed + 1, j2 = std::min(ed + kd, n), ln = ed - st + 1, lm = j2 - j1 + 1;
    if (lm <= 0) return;
    larf_right(lm, ln, v + half + st, tau[half + st], &at(j1, st), ld, w);
    double* vv = v + half + j1;
    vv[0] = 1.0;
    for (std::int64_t i = 1; i < lm; ++i) {
        vv[i] = at(j1 + i, st);
        at(j1 + i, st) = 0.0;
    }
    larfg(lm, at(j1, st), vv + 1, tau[half + j1]);
    larf_left(lm, ln - 1, vv, tau[half + j1], &at(j1, st + 1), ld);
}

}  // namespace deadspec::detail::band
