// SPDX-License-Identifier: Apache-2.0
// The split form's passes 0 and 1 over row ranges of a block (detail/split_rows.hpp; pass 2 in
// ddc_split_apply.cpp, the shared helpers in detail/split_loops.hpp). Plain loops over rows,
// vectorised for the ISA of the wrapper they are inlined into: the baseline, AVX2 or
// AVX-512, chosen at run time. Built without contraction into fused multiply-adds (see
// cpp/CMakeLists.txt), every version rounds every operation alike: the same bits.
#include "detail/split_loops.hpp"

namespace deadspec::detail {

namespace {

// ---- pass 0 ------------------------------------------------------------------------------

// Calls one(j, k) for every element j of a row of n, k = j mod kLanes: the partial sum of the
// row sums that element j goes to.
//
// `ivdep` on the hot loops of the split passes (here, tangent_t2_row, apply_loop) and of the
// coordinate step: their arrays are distinct (rows of distinct tensors, or scratch). Without it
// GCC cannot prove that across inlined helpers and emits a vector and a scalar copy of the loop,
// chosen by a run-time address test; for some heap layouts the test picks the scalar copy, and
// the step took twice as long (in a fresh process, or after other optimizers had run).
template <typename One>
DEADSPEC_ALWAYS_INLINE void over_lanes(std::int64_t n, One&& one) {
    std::int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes)
#pragma GCC ivdep
        for (int k = 0; k < kLanes; ++k) one(j + k, k);
#pragma GCC ivdep
    for (int k = 0; j < n; ++j, ++k) one(j, k);
}

// Pass 0 on one row in one loop, x̃ = (x·f)·(1/σ) and g̃ = g·σ formed in registers: Σ g̃x̃ and
// Σ x̃² into out[0], out[1] (Rows; the lanes, kLanes), Σ g̃·P x̃ (Cols >= 1) and Σ (P x̃)²
// (Cols = 2) added to ca, cb; the largest |g| as bits (absmax_loop) into top (Top).
template <typename T, bool Fma, bool Rows, int Cols, bool Top>
DEADSPEC_ALWAYS_INLINE void sums_row(const T* __restrict x, const T* __restrict g, T sr, T sir,
                                     const T* __restrict cs, const T* __restrict ics,
                                     const T* __restrict mu, T f, double* __restrict ca,
                                     double* __restrict cb, std::int64_t n,
                                     double* __restrict out, Bits<T>& top) {
    constexpr bool F = Fma && sizeof(T) == 4;
    [[maybe_unused]] const Bits<T> mask = ~(Bits<T>(1) << (8 * sizeof(T) - 1));
    double ag[kLanes] = {}, ax[kLanes] = {};
    Bits<T> tp[kLanes] = {};
    auto one = [&](std::int64_t j, int k) DEADSPEC_LAMBDA_INLINE {
        const T xt = (x[j] * f) * (sir * ics[j]);
        const T gt = g[j] * (sr * cs[j]);
        const double dx = static_cast<double>(xt), dg = static_cast<double>(gt);
        if constexpr (Rows) {
            ag[k] = madd<F>(dg, dx, ag[k]);
            ax[k] = madd<F>(dx, dx, ax[k]);
        }
        if constexpr (Cols >= 1) {
            const double pc = static_cast<double>(xt - mu[j]);
            ca[j] = madd<F>(dg, pc, ca[j]);
            if constexpr (Cols == 2) cb[j] = madd<F>(pc, pc, cb[j]);
        }
        if constexpr (Top) {
            Bits<T> u;
            std::memcpy(&u, g + j, sizeof(T));
            u &= mask;
            tp[k] = u > tp[k] ? u : tp[k];
        }
    };
    over_lanes(n, one);
    if constexpr (Rows) {
        out[0] = lanes_sum(ag);
        out[1] = lanes_sum(ax);
    }
    if constexpr (Top)
        for (int k = 0; k < kLanes; ++k) top = tp[k] > top ? tp[k] : top;
}

// Pass 0 on kRowBlock rows at once, column sums only (no row sums): each column's sums take
// the rows in row order, as kRowBlock calls of sums_row would (the same bits), with ca, cb and
// the column factors read and written once per kRowBlock rows instead of once per row. Rows
// x + q·xs and g + q·gs; sr, sir their row factors.
template <typename T, bool Fma, int Cols, bool Top>
DEADSPEC_ALWAYS_INLINE void sums_cols_block(const T* __restrict x, std::int64_t xs,
                                            const T* __restrict g, std::int64_t gs,
                                            const T* __restrict sr, const T* __restrict sir,
                                            const T* __restrict cs, const T* __restrict ics,
                                            const T* __restrict mu, T f, double* __restrict ca,
                                            double* __restrict cb, std::int64_t n,
                                            Bits<T>& top) {
    constexpr bool F = Fma && sizeof(T) == 4;
    [[maybe_unused]] const Bits<T> mask = ~(Bits<T>(1) << (8 * sizeof(T) - 1));
    T r[kRowBlock], ir[kRowBlock];
    for (int q = 0; q < kRowBlock; ++q) {
        r[q] = sr[q];
        ir[q] = sir[q];
    }
    Bits<T> tp = 0;
    for (std::int64_t j = 0; j < n; ++j) {
        const T c = cs[j], ic = ics[j], mj = mu[j];
        double a = ca[j];
        [[maybe_unused]] double bb = 0.0;
        if constexpr (Cols == 2) bb = cb[j];
        for (int q = 0; q < kRowBlock; ++q) {
            const T xt = (x[q * xs + j] * f) * (ir[q] * ic);
            const T gt = g[q * gs + j] * (r[q] * c);
            const double pc = static_cast<double>(xt - mj);
            a = madd<F>(static_cast<double>(gt), pc, a);
            if constexpr (Cols == 2) bb = madd<F>(pc, pc, bb);
            if constexpr (Top) {
                Bits<T> u;
                std::memcpy(&u, g + q * gs + j, sizeof(T));
                u &= mask;
                tp = u > tp ? u : tp;
            }
        }
        ca[j] = a;
        if constexpr (Cols == 2) cb[j] = bb;
    }
    if constexpr (Top) top = tp > top ? tp : top;
}

// A row's sums that were not finite, summed again scaled (rescue_dot) from x̃ and g̃.
template <typename T>
void rescue_row(const T* x, const T* g, const RowScale<T>& sc, T f, std::int64_t n,
                SplitScratch<T>& s, double* out) {
    for (std::int64_t j = 0; j < n; ++j) {
        s.xt[static_cast<std::size_t>(j)] = (x[j] * f) * (sc.ir * sc.ics[j]);
        s.gt[static_cast<std::size_t>(j)] = g[j] * (sc.r * sc.cs[j]);
    }
    if (!std::isfinite(out[0])) out[0] = rescue_dot(out[0], s.gt.data(), s.xt.data(), n);
    if (!std::isfinite(out[1])) out[1] = rescue_dot(out[1], s.xt.data(), s.xt.data(), n);
}

template <typename T, bool Fma, bool Rows, int Cols, bool Top>
DEADSPEC_ALWAYS_INLINE void sums_rows(const SplitRef<T>& b, const SplitItem& it,
                                      SplitScratch<T>& s, double* rgx, double* rxx, double* cgx,
                                      double* cxx, Bits<T>& top) {
    const std::int64_t n = b.cols;
    const T* mu = b.mu ? b.mu : s.zeros.data();
    std::int64_t i = it.r0;
    if constexpr (!Rows && Cols >= 1) {  // column sums only: kRowBlock rows at once
        if (b.gs1 == 1) {
            for (; i + kRowBlock <= it.r1; i += kRowBlock) {
                T r[kRowBlock], ir[kRowBlock];
                for (int q = 0; q < kRowBlock; ++q) {
                    const RowScale<T> sc = row_scale(b, i + q, s);
                    r[q] = sc.r;
                    ir[q] = sc.ir;
                }
                const RowScale<T> sc = row_scale(b, i, s);
                sums_cols_block<T, Fma, Cols, Top>(b.x + i * n, n, b.g + i * b.gs0, b.gs0, r, ir,
                                                   sc.cs, sc.ics, mu, b.decay, cgx, cxx, n, top);
            }
        }
    }
    for (; i < it.r1; ++i) {
        const T* g = gather_row(b.g, i, b.gs0, b.gs1, n, s.gbuf);
        const T* x = b.x + i * n;
        if constexpr (!Rows && Cols == 0) {
            top = std::max(top, absmax_loop<T>(g, n));
        } else {
            const RowScale<T> sc = row_scale(b, i, s);
            double out[2];
            sums_row<T, Fma, Rows, Cols, Top>(x, g, sc.r, sc.ir, sc.cs, sc.ics, mu, b.decay, cgx,
                                              cxx, n, out, top);
            if constexpr (Rows) {
                if (!std::isfinite(out[0]) || !std::isfinite(out[1]))
                    rescue_row(x, g, sc, b.decay, n, s, out);
                rgx[i] = out[0];
                rxx[i] = out[1];
            }
        }
    }
}

template <typename T, bool Fma, bool Rows, int Cols>
DEADSPEC_ALWAYS_INLINE void sums_top(const SplitRef<T>& b, const SplitItem& it,
                                     SplitScratch<T>& s, double* rgx, double* rxx, double* cgx,
                                     double* cxx, std::uint64_t* gtop) {
    Bits<T> top = 0;
    if (gtop)
        sums_rows<T, Fma, Rows, Cols, true>(b, it, s, rgx, rxx, cgx, cxx, top);
    else
        sums_rows<T, Fma, Rows, Cols, false>(b, it, s, rgx, rxx, cgx, cxx, top);
    if (gtop) *gtop = std::max(*gtop, static_cast<std::uint64_t>(top));
}

template <typename T, bool Fma>
DEADSPEC_ALWAYS_INLINE void sums_impl(const SplitRef<T>& b, const SplitItem& it,
                                      SplitScratch<T>& s, double* rgx, double* rxx, double* cgx,
                                      double* cxx, std::uint64_t* gtop) {
    fit_rows(s, b.cols);
    const int cols = cgx ? (cxx ? 2 : 1) : 0;
    if (rgx) {
        if (cols == 2) return sums_top<T, Fma, true, 2>(b, it, s, rgx, rxx, cgx, cxx, gtop);
        if (cols == 1) return sums_top<T, Fma, true, 1>(b, it, s, rgx, rxx, cgx, cxx, gtop);
        return sums_top<T, Fma, true, 0>(b, it, s, rgx, rxx, cgx, cxx, gtop);
    }
    if (cols == 2) return sums_top<T, Fma, false, 2>(b, it, s, rgx, rxx, cgx, cxx, gtop);
    if (cols == 1) return sums_top<T, Fma, false, 1>(b, it, s, rgx, rxx, cgx, cxx, gtop);
    if (gtop) sums_top<T, Fma, false, 0>(b, it, s, rgx, rxx, cgx, cxx, gtop);
}

// ---- pass 1 ------------------------------------------------------------------------------

// Pass 1's commit of element j (lane k): the moments, checked before commit, stored; the update
// into u; its Σ u·x̃ into lane k of acc (Rows) and Σ u·P x̃ into cu[j] (Cols).
template <typename T, bool F, bool Rows, bool Cols>
DEADSPEC_ALWAYS_INLINE void commit_lane(T m0, T v0, T mk, T vk, T xj, std::int64_t j, int k,
                                        T* __restrict m, T* __restrict v, T* __restrict u,
                                        const T* __restrict mu, double* __restrict cu,
                                        double* acc, CommitCount<T>* cnt, T ibc, T ss, T eps) {
    cnt[k] += keep_finite(m0, v0, mk, vk);
    m[j] = mk;
    v[j] = vk;
    const T uj = split_update(mk, vk, ibc, ss, eps);
    u[j] = uj;
    if constexpr (Rows) acc[k] = madd<F>(static_cast<double>(uj), static_cast<double>(xj), acc[k]);
    if constexpr (Cols)
        cu[j] = madd<F>(static_cast<double>(uj), static_cast<double>(xj - mu[j]), cu[j]);
}

template <typename T>
DEADSPEC_ALWAYS_INLINE CommitCount<T> lanes_count(const CommitCount<T>* cnt) {
    CommitCount<T> refused = 0;
    for (int k = 0; k < kLanes; ++k) refused += cnt[k];
    return refused;
}

// One row of pass 1 in one loop (heads not rotated), σ formed in registers (σ_j = r·c_j,
// 1/σ_j = (1/r)·(1/c_j), as row_scale): the tangential input, the moments (checked before
// commit), the update into u, its Σ u·x̃ (Rows; the lanes) into *ru and Σ u·P x̃ (Cols) added
// to cu. Returns the elements refused.
template <typename T, int Mode, bool Fma, bool Rows, bool Cols>
DEADSPEC_ALWAYS_INLINE CommitCount<T> moments_row(
    const T* __restrict x, const T* __restrict g, T* __restrict m, T* __restrict v, T r, T ir,
    const T* __restrict cs, const T* __restrict ics, T a, const T* __restrict bc,
    const T* __restrict nrm, const T* __restrict mu, T* __restrict u, double* __restrict cu,
    std::int64_t n, T f, T b1, T b2, T ibc, T ss, T eps, double* ru) {
    constexpr bool F = Fma && sizeof(T) == 4;
    const T w1 = T(1) - b1, w2 = T(1) - b2;
    double acc[kLanes] = {};
    CommitCount<T> cnt[kLanes] = {};
    auto one = [&](std::int64_t j, int k) DEADSPEC_LAMBDA_INLINE {
        const T xj = (x[j] * f) * (ir * ics[j]);
        const T tj = split_project<T, Mode>(g[j] * (r * cs[j]), xj, a, bc, nrm, mu, j);
        const T m0 = m[j], v0 = v[j];
        T mk = b1 * m0 + w1 * tj;
        T vk = b2 * v0 + (w2 * tj) * tj;  // AdamW's order: overflows where it does
        // (checked before written: non-finite moments keep their pre-step values, and the update
        // is that of the moments as stored)
        commit_lane<T, F, Rows, Cols>(m0, v0, mk, vk, xj, j, k, m, v, u, mu, cu, acc, cnt, ibc, ss,
                                      eps);
    };
    over_lanes(n, one);
    if constexpr (Rows) *ru = lanes_sum(acc);
    return lanes_count<T>(cnt);
}

// moments_row on kRowBlock rows at once, without row sums (Rows = false): each column's Σ u·P x̃
// takes the rows in row order (the same bits), with cu and the per-column factors read once per
// kRowBlock rows. Rows x + q·n, g + q·gs, m + q·n, v + q·n, and u + q·n where kept (Keep).
template <typename T, int Mode, bool Fma, bool Cols, bool Keep>
DEADSPEC_ALWAYS_INLINE CommitCount<T> moments_cols_block(
    const T* __restrict x, const T* __restrict g, std::int64_t gs, T* __restrict m,
    T* __restrict v, const T* __restrict sr, const T* __restrict sir, const T* __restrict cs,
    const T* __restrict ics, const T* __restrict ra, const T* __restrict bc,
    const T* __restrict nrm, const T* __restrict mu, T* __restrict u, double* __restrict cu,
    std::int64_t n, T f, T b1, T b2, T ibc, T ss, T eps) {
    constexpr bool F = Fma && sizeof(T) == 4;
    const T w1 = T(1) - b1, w2 = T(1) - b2;
    T r[kRowBlock], ir[kRowBlock], a[kRowBlock];
    for (int q = 0; q < kRowBlock; ++q) {
        r[q] = sr[q];
        ir[q] = sir[q];
        a[q] = ra[q];
    }
    CommitCount<T> cnt = 0;
    // (the rows are distinct: no element of one is another's; GCC cannot tell for offsets q·n)
#pragma GCC ivdep
    for (std::int64_t j = 0; j < n; ++j) {
        const T c = cs[j], ic = ics[j];
        [[maybe_unused]] double acc = 0.0;
        if constexpr (Cols) acc = cu[j];
        for (int q = 0; q < kRowBlock; ++q) {
            const std::int64_t k = q * n + j;
            const T xj = (x[k] * f) * (ir[q] * ic);
            const T tj = split_project<T, Mode>(g[q * gs + j] * (r[q] * c), xj, a[q], bc, nrm,
                                                mu, j);
            const T m0 = m[k], v0 = v[k];
            T mk = b1 * m0 + w1 * tj;
            T vk = b2 * v0 + (w2 * tj) * tj;
            cnt += keep_finite(m0, v0, mk, vk);
            m[k] = mk;
            v[k] = vk;
            const T uj = split_update(mk, vk, ibc, ss, eps);
            if constexpr (Keep) u[k] = uj;
            if constexpr (Cols)
                acc = madd<F>(static_cast<double>(uj), static_cast<double>(xj - mu[j]), acc);
        }
        if constexpr (Cols) cu[j] = acc;
    }
    return cnt;
}

// Rotated heads, the first half of pass 1 on one row in one loop, σ formed in registers: the
// tangential input t, and (1−β₂)·t² stored into t2 or (Sum) added to the per-column sums in t2
// (a head's rows, summed in row order as before; the same bits).
template <typename T, int Mode, bool Sum>
DEADSPEC_ALWAYS_INLINE void tangent_t2_row(const T* __restrict x, const T* __restrict g, T r,
                                           T ir, const T* __restrict cs,
                                           const T* __restrict ics, T a,
                                           const T* __restrict bc, const T* __restrict nrm,
                                           const T* __restrict mu, T* __restrict t,
                                           T* __restrict t2, std::int64_t n, T f, T w2) {
#pragma GCC ivdep
    for (std::int64_t j = 0; j < n; ++j) {
        const T xj = (x[j] * f) * (ir * ics[j]);
        const T tj = split_project<T, Mode>(g[j] * (r * cs[j]), xj, a, bc, nrm, mu, j);
        t[j] = tj;
        const T q = (w2 * tj) * tj;
        if constexpr (Sum) t2[j] += q;
        else t2[j] = q;
    }
}

// Rotated heads, the second half of pass 1 on one row in one loop: the moments from t and the
// averaged t2 (checked before commit), the update into u, its Σ u·x̃ (Rows; the lanes) into *ru
// and Σ u·P x̃ (Cols) added to cu, x̃ formed in registers (row_scale's 1/σ). Returns the
// elements refused.
template <typename T, bool Fma, bool Rows, bool Cols>
DEADSPEC_ALWAYS_INLINE CommitCount<T> moments_t2_row(
    const T* __restrict x, T ir, const T* __restrict ics, const T* __restrict t,
    const T* __restrict t2, T* __restrict m, T* __restrict v, T* __restrict u,
    const T* __restrict mu, double* __restrict cu, std::int64_t n, T f, T b1, T b2, T ibc, T ss,
    T eps, double* ru) {
    constexpr bool F = Fma && sizeof(T) == 4;
    const T w1 = T(1) - b1;
    double acc[kLanes] = {};
    CommitCount<T> cnt[kLanes] = {};
    auto one = [&](std::int64_t j, int k) DEADSPEC_LAMBDA_INLINE {
        const T m0 = m[j], v0 = v[j];
        T mk = b1 * m0 + w1 * t[j];
        T vk = b2 * v0 + t2[j];
        const T xj = (x[j] * f) * (ir * ics[j]);
        commit_lane<T, F, Rows, Cols>(m0, v0, mk, vk, xj, j, k, m, v, u, mu, cu, acc, cnt, ibc, ss,
                                      eps);
    };
    over_lanes(n, one);
    if constexpr (Rows) *ru = lanes_sum(acc);
    return lanes_count<T>(cnt);
}

// Pass 1 over an item's rows, heads rotated: (1−β₂)·t² averaged within each head before it
// enters v — along the row (axis 1), or over the head's rows per column (axis 0: this item is a
// head, or rows outside the heads). A row's Σ u·x̃ that is not finite summed again scaled.
template <typename T, int Mode, bool Fma, bool Rows, bool Cols>
DEADSPEC_ALWAYS_INLINE std::int64_t moments_rotated(const SplitRef<T>& b, const SplitItem& it,
                                                    SplitScratch<T>& s, double* ru, double* cu) {
    const std::int64_t n = b.cols;
    const T* mu = b.mu ? b.mu : s.zeros.data();
    const AdamScalars<T>& hp = b.hp;
    const T w2 = T(1) - hp.b2;
    const bool head = b.axis == 0 && it.segment;  // t2: the per-column mean over the rows
    const std::int64_t kept = b.axis == 0 ? it.r1 - it.r0 : 1;  // rows of t kept
    fit(s.t, static_cast<std::size_t>(kept * n));
    fit(s.t2, static_cast<std::size_t>((head ? 1 : kept) * n));
    T* t2 = s.t2.data();
    if (head) std::fill(t2, t2 + n, T(0));
    std::int64_t refused = 0;
    auto update = [&](std::int64_t i, const T* t, const T* q) DEADSPEC_LAMBDA_INLINE {
        const RowScale<T> sc = row_scale(b, i, s);
        const T* x = b.x + i * n;
        T* u = b.u ? b.u + (i - b.u0) * n : s.u.data();
        double sum = 0.0;
        refused += moments_t2_row<T, Fma, Rows, Cols>(
            x, sc.ir, sc.ics, t, q, b.m + i * n, b.v + i * n, u, mu, cu, n, b.decay, hp.b1,
            hp.b2, hp.inv_bc2_sqrt, hp.step_size, hp.eps, &sum);
        if constexpr (Rows) {
            if (!std::isfinite(sum)) {
                for (std::int64_t j = 0; j < n; ++j)
                    s.xt[static_cast<std::size_t>(j)] = (x[j] * b.decay) * (sc.ir * sc.ics[j]);
                sum = rescue_dot(sum, u, s.xt.data(), n);
            }
            ru[i] = sum;
        }
    };
    for (std::int64_t i = it.r0; i < it.r1; ++i) {
        const RowScale<T> sc = row_scale(b, i, s);
        const T* g = gather_row(b.g, i, b.gs0, b.gs1, n, s.gbuf);
        const std::int64_t off = b.axis == 0 ? (i - it.r0) * n : 0;
        T* t = s.t.data() + off;
        const T a = b.a ? b.a[i] : T(0);
        if (head) {
            tangent_t2_row<T, Mode, true>(b.x + i * n, g, sc.r, sc.ir, sc.cs, sc.ics, a, b.bc,
                                          b.nrm, mu, t, t2, n, b.decay, w2);
            continue;
        }
        tangent_t2_row<T, Mode, false>(b.x + i * n, g, sc.r, sc.ir, sc.cs, sc.ics, a, b.bc,
                                       b.nrm, mu, t, t2 + off, n, b.decay, w2);
        if (b.axis == 1) {
            mean_within_segments(t2, *b.segs);
            update(i, t, t2);
        }
    }
    if (b.axis == 1) return refused;
    if (head) {
        const T count = static_cast<T>(kept);
        for (std::int64_t j = 0; j < n; ++j) t2[j] = t2[j] / count;
    }
    for (std::int64_t i = it.r0; i < it.r1; ++i) {
        const std::int64_t off = (i - it.r0) * n;
        update(i, s.t.data() + off, head ? t2 : t2 + off);
    }
    return refused;
}

// Pass 1 over an item's rows, heads not rotated (moments_row); a row's Σ u·x̃ that is not
// finite summed again scaled (rescue_dot).
template <typename T, int Mode, bool Fma, bool Rows, bool Cols>
DEADSPEC_ALWAYS_INLINE std::int64_t moments_rows(const SplitRef<T>& b, const SplitItem& it,
                                                 SplitScratch<T>& s, double* ru, double* cu) {
    const std::int64_t n = b.cols;
    const T* mu = b.mu ? b.mu : s.zeros.data();
    const AdamScalars<T>& hp = b.hp;
    std::int64_t refused = 0;
    std::int64_t i = it.r0;
    if constexpr (!Rows) {  // no row sums: kRowBlock rows at once
        if (b.gs1 == 1) {
            for (; i + kRowBlock <= it.r1; i += kRowBlock) {
                T r[kRowBlock], ir[kRowBlock], a[kRowBlock];
                for (int q = 0; q < kRowBlock; ++q) {
                    const RowScale<T> sc = row_scale(b, i + q, s);
                    r[q] = sc.r;
                    ir[q] = sc.ir;
                    a[q] = b.a ? b.a[i + q] : T(0);
                }
                const RowScale<T> sc = row_scale(b, i, s);
                const std::int64_t k = i * n;
                auto go = [&](auto keep) DEADSPEC_LAMBDA_INLINE {
                    return moments_cols_block<T, Mode, Fma, Cols, decltype(keep)::value>(
                        b.x + k, b.g + i * b.gs0, b.gs0, b.m + k, b.v + k, r, ir, sc.cs, sc.ics, a,
                        b.bc, b.nrm, mu, b.u ? b.u + (i - b.u0) * n : nullptr, cu, n, b.decay,
                        hp.b1, hp.b2, hp.inv_bc2_sqrt, hp.step_size, hp.eps);
                };
                refused += b.u ? go(std::true_type{}) : go(std::false_type{});
            }
        }
    }
    for (; i < it.r1; ++i) {
        const RowScale<T> sc = row_scale(b, i, s);
        const T* g = gather_row(b.g, i, b.gs0, b.gs1, n, s.gbuf);
        const T* x = b.x + i * n;
        T* u = b.u ? b.u + (i - b.u0) * n : s.u.data();
        double sum = 0.0;
        refused += moments_row<T, Mode, Fma, Rows, Cols>(
            x, g, b.m + i * n, b.v + i * n, sc.r, sc.ir, sc.cs, sc.ics, b.a ? b.a[i] : T(0), b.bc,
            b.nrm, mu, u, cu, n, b.decay, hp.b1, hp.b2, hp.inv_bc2_sqrt, hp.step_size, hp.eps,
            &sum);
        if constexpr (Rows) {
            if (!std::isfinite(sum)) {
                for (std::int64_t j = 0; j < n; ++j)
                    s.xt[static_cast<std::size_t>(j)] = (x[j] * b.decay) * (sc.ir * sc.ics[j]);
                sum = rescue_dot(sum, u, s.xt.data(), n);
            }
            ru[i] = sum;
        }
    }
    return refused;
}

template <typename T, int Mode, bool Fma>
DEADSPEC_ALWAYS_INLINE std::int64_t moments_mode(const SplitRef<T>& b, const SplitItem& it,
                                                 SplitScratch<T>& s, double* ru, double* cu) {
    if (b.axis < 0) {
        if (ru && cu) return moments_rows<T, Mode, Fma, true, true>(b, it, s, ru, cu);
        if (ru) return moments_rows<T, Mode, Fma, true, false>(b, it, s, ru, cu);
        if (cu) return moments_rows<T, Mode, Fma, false, true>(b, it, s, ru, cu);
        return moments_rows<T, Mode, Fma, false, false>(b, it, s, ru, cu);
    }
    if (ru && cu) return moments_rotated<T, Mode, Fma, true, true>(b, it, s, ru, cu);
    if (ru) return moments_rotated<T, Mode, Fma, true, false>(b, it, s, ru, cu);
    if (cu) return moments_rotated<T, Mode, Fma, false, true>(b, it, s, ru, cu);
    return moments_rotated<T, Mode, Fma, false, false>(b, it, s, ru, cu);
}

template <typename T, bool Fma>
DEADSPEC_ALWAYS_INLINE std::int64_t moments_impl(const SplitRef<T>& b, const SplitItem& it,
                                                 SplitScratch<T>& s, double* ru, double* cu) {
    fit_rows(s, b.cols);
    const int mode = b.mode();
    if (mode == kSplitRow) return moments_mode<T, kSplitRow, Fma>(b, it, s, ru, cu);
    if (mode == kSplitCol) return moments_mode<T, kSplitCol, Fma>(b, it, s, ru, cu);
    return moments_mode<T, kSplitPlain, Fma>(b, it, s, ru, cu);
}

// ---- the run-time ISA choice ---------------------------------------------------------------

template <typename T>
void sums_base(const SplitRef<T>& b, const SplitItem& it, SplitScratch<T>& s, double* a,
               double* c, double* d, double* e, std::uint64_t* top) {
    sums_impl<T, false>(b, it, s, a, c, d, e, top);
}
template <typename T>
std::int64_t moments_base(const SplitRef<T>& b, const SplitItem& it, SplitScratch<T>& s,
                          double* ru, double* cu) {
    return moments_impl<T, false>(b, it, s, ru, cu);
}

#ifdef DEADSPEC_DDC_AVX2
template <typename T>
DEADSPEC_SPLIT_AVX2 void sums_avx2(const SplitRef<T>& b, const SplitItem& it,
                                               SplitScratch<T>& s, double* a, double* c,
                                               double* d, double* e, std::uint64_t* top) {
    sums_impl<T, true>(b, it, s, a, c, d, e, top);
}
template <typename T>
DEADSPEC_SPLIT_AVX2 std::int64_t moments_avx2(const SplitRef<T>& b,
                                                          const SplitItem& it,
                                                          SplitScratch<T>& s, double* ru,
                                                          double* cu) {
    return moments_impl<T, true>(b, it, s, ru, cu);
}
template <typename T>
DEADSPEC_SPLIT_AVX512 void sums_avx512(const SplitRef<T>& b, const SplitItem& it,
                                     SplitScratch<T>& s, double* a, double* c, double* d,
                                     double* e, std::uint64_t* top) {
    sums_impl<T, true>(b, it, s, a, c, d, e, top);
}
template <typename T>
DEADSPEC_SPLIT_AVX512 std::int64_t moments_avx512(const SplitRef<T>& b, const SplitItem& it,
                                                SplitScratch<T>& s, double* ru, double* cu) {
    return moments_impl<T, true>(b, it, s, ru, cu);
}
#endif

}  // namespace

std::vector<SplitItem> split_items(std::int64_t rows, std::int64_t cols, int axis,
                                   const Segments* segs) {
    const std::int64_t per = std::max<std::int64_t>(1, kSplitChunk / std::max<std::int64_t>(cols, 1));
    std::vector<SplitItem> out;
    auto chunks = [&](std::int64_t a, std::int64_t e) {
        for (std::int64_t r = a; r < e; r += per) out.push_back({r, std::min(e, r + per), false});
    };
    if (axis != 0 || segs == nullptr || segs->empty()) {
        chunks(0, rows);
        return out;
    }
    std::int64_t at = 0;
    for (const auto& [a, e] : *segs) {
        chunks(at, a);
        out.push_back({a, e, true});
        at = e;
    }
    chunks(at, rows);
    return out;
}

template <typename T>
void split_sums_rows(const SplitRef<T>& b, const SplitItem& it, SplitScratch<T>& s,
                     double* row_gx, double* row_xx, double* col_gx, double* col_xx,
                     std::uint64_t* gtop) {
#ifdef DEADSPEC_DDC_AVX2
    if (has_avx512()) return sums_avx512<T>(b, it, s, row_gx, row_xx, col_gx, col_xx, gtop);
    if (has_avx2_fma()) return sums_avx2<T>(b, it, s, row_gx, row_xx, col_gx, col_xx, gtop);
#endif
    sums_base<T>(b, it, s, row_gx, row_xx, col_gx, col_xx, gtop);
}

template <typename T>
std::int64_t split_moments_rows(const SplitRef<T>& b, const SplitItem& it, SplitScratch<T>& s,
                                double* row_u, double* col_u) {
#ifdef DEADSPEC_DDC_AVX2
    if (has_avx512()) return moments_avx512<T>(b, it, s, row_u, col_u);
    if (has_avx2_fma()) return moments_avx2<T>(b, it, s, row_u, col_u);
#endif
    return moments_base<T>(b, it, s, row_u, col_u);
}

#define DEADSPEC_SPLIT_ROWS(T)                                                                  \
    template void split_sums_rows<T>(const SplitRef<T>&, const SplitItem&, SplitScratch<T>&,    \
                                     double*, double*, double*, double*, std::uint64_t*);        \
    template std::int64_t split_moments_rows<T>(const SplitRef<T>&, const SplitItem&,           \
                                                SplitScratch<T>&, double*, double*);
DEADSPEC_SPLIT_ROWS(float)
DEADSPEC_SPLIT_ROWS(double)
#undef DEADSPEC_SPLIT_ROWS

}  // namespace deadspec::detail
