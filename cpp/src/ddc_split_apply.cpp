// SPDX-License-Identifier: Apache-2.0
// The split form's pass 2 (the apply) over row ranges of a block, and the scaled rescue of
// column sums that are not finite (detail/split_rows.hpp). Plain loops over rows, vectorised for
// the ISA of the wrapper they are inlined into, as the passes of ddc_split_rows.cpp.
#include "detail/split_loops.hpp"

namespace deadspec::detail {

namespace {

// ---- pass 2 ------------------------------------------------------------------------------

// Cm: 0 no column factor, 1 x·c_j, 2 only the centred part scaled (x + (c_j − 1)·σ·P x̃).
// Kept: the update read from `ku` (pass 1's), else recomputed from the moments (the same bits).
// σ formed in registers from its factors (moments_row).
template <typename T, int Mode, int Cm, bool Kept>
DEADSPEC_ALWAYS_INLINE CommitCount<T> apply_loop(
    T* __restrict x, const T* __restrict m, const T* __restrict v, const T* __restrict ku,
    T sr, T sir, const T* __restrict cs, const T* __restrict ics, T a, const T* __restrict bc,
    const T* __restrict nrm, const T* __restrict mu, T r, const T* __restrict c, std::int64_t n,
    T f, T ibc, T ss, T eps) {
    CommitCount<T> refused = 0;
// (ivdep: see over_lanes in ddc_split_rows.cpp)
#pragma GCC ivdep
    for (std::int64_t j = 0; j < n; ++j) {
        const T sig = sr * cs[j];
        const T xj = x[j] * f;
        const T xtj = xj * (sir * ics[j]);
        const T uk = Kept ? ku[j] : split_update(m[j], v[j], ibc, ss, eps);
        const T u = split_project<T, Mode>(uk, xtj, a, bc, nrm, mu, j);
        T xn = xj * r;
        if constexpr (Cm == 1) xn = xn * c[j];
        if constexpr (Cm == 2) xn = xn + (c[j] - T(1)) * (sig * (xtj - mu[j]));
        const T xk = xn - sig * u;
        const bool ok = (xk - xk) == T(0);  // a non-finite x keeps its (decayed) value
        x[j] = pick(ok, xk, xj);
        refused += ok ? CommitCount<T>(0) : CommitCount<T>(1);
    }
    return refused;
}

// apply_loop on kRowBlock rows at once (rows x + q·n, m + q·n, v + q·n, ku + q·n), the
// per-column factors read once per kRowBlock rows; every element as apply_loop computes it.
template <typename T, int Mode, int Cm, bool Kept>
DEADSPEC_ALWAYS_INLINE CommitCount<T> apply_block(
    T* __restrict x, const T* __restrict m, const T* __restrict v, const T* __restrict ku,
    const T* __restrict sr, const T* __restrict sir, const T* __restrict cs,
    const T* __restrict ics, const T* __restrict ra, const T* __restrict bc,
    const T* __restrict nrm, const T* __restrict mu, const T* __restrict rr,
    const T* __restrict c, std::int64_t n, T f, T ibc, T ss, T eps) {
    T r[kRowBlock], ir[kRowBlock], a[kRowBlock], rm[kRowBlock];
    for (int q = 0; q < kRowBlock; ++q) {
        r[q] = sr[q];
        ir[q] = sir[q];
        a[q] = ra[q];
        rm[q] = rr[q];
    }
    CommitCount<T> refused = 0;
#pragma GCC ivdep
    for (std::int64_t j = 0; j < n; ++j) {
        const T cj = cs[j], icj = ics[j];
        for (int q = 0; q < kRowBlock; ++q) {
            const std::int64_t k = q * n + j;
            const T sig = r[q] * cj;
            const T xj = x[k] * f;
            const T xtj = xj * (ir[q] * icj);
            const T uk = Kept ? ku[k] : split_update(m[k], v[k], ibc, ss, eps);
            const T u = split_project<T, Mode>(uk, xtj, a[q], bc, nrm, mu, j);
            T xn = xj * rm[q];
            if constexpr (Cm == 1) xn = xn * c[j];
            if constexpr (Cm == 2) xn = xn + (c[j] - T(1)) * (sig * (xtj - mu[j]));
            const T xk = xn - sig * u;
            const bool ok = (xk - xk) == T(0);
            x[k] = pick(ok, xk, xj);
            refused += ok ? CommitCount<T>(0) : CommitCount<T>(1);
        }
    }
    return refused;
}

template <typename T, int Mode, int Cm, bool Kept>
DEADSPEC_ALWAYS_INLINE std::int64_t apply_mode(const SplitRef<T>& b, const SplitItem& it,
                                               SplitScratch<T>& s) {
    const std::int64_t n = b.cols;
    const T* mu = b.mu ? b.mu : s.zeros.data();
    const AdamScalars<T>& hp = b.hp;
    std::int64_t refused = 0;
    std::int64_t i = it.r0;
    for (; i + kRowBlock <= it.r1; i += kRowBlock) {
        T r[kRowBlock], ir[kRowBlock], a[kRowBlock], rm[kRowBlock];
        for (int q = 0; q < kRowBlock; ++q) {
            const RowScale<T> sc = row_scale(b, i + q, s);
            r[q] = sc.r;
            ir[q] = sc.ir;
            a[q] = b.a ? b.a[i + q] : T(0);
            rm[q] = b.rm ? b.rm[i + q] : T(1);
        }
        const RowScale<T> sc = row_scale(b, i, s);
        refused += static_cast<std::int64_t>(apply_block<T, Mode, Cm, Kept>(
            b.x + i * n, b.m + i * n, b.v + i * n, Kept ? b.u + (i - b.u0) * n : nullptr, r, ir,
            sc.cs, sc.ics, a, b.bc, b.nrm, mu, rm, b.cm, n, b.decay, hp.inv_bc2_sqrt,
            hp.step_size, hp.eps));
    }
    for (; i < it.r1; ++i) {
        const RowScale<T> sc = row_scale(b, i, s);
        refused += static_cast<std::int64_t>(apply_loop<T, Mode, Cm, Kept>(
            b.x + i * n, b.m + i * n, b.v + i * n, Kept ? b.u + (i - b.u0) * n : nullptr, sc.r, sc.ir,
            sc.cs, sc.ics, b.a ? b.a[i] : T(0), b.bc, b.nrm, mu, b.rm ? b.rm[i] : T(1), b.cm, n,
            b.decay, hp.inv_bc2_sqrt, hp.step_size, hp.eps));
    }
    return refused;
}

template <typename T, int Mode, int Cm>
DEADSPEC_ALWAYS_INLINE std::int64_t apply_kept(const SplitRef<T>& b, const SplitItem& it,
                                               SplitScratch<T>& s) {
    if (b.u) return apply_mode<T, Mode, Cm, true>(b, it, s);
    return apply_mode<T, Mode, Cm, false>(b, it, s);
}

template <typename T, int Mode>
DEADSPEC_ALWAYS_INLINE std::int64_t apply_cm(const SplitRef<T>& b, const SplitItem& it,
                                             SplitScratch<T>& s) {
    if (!b.cm) return apply_kept<T, Mode, 0>(b, it, s);
    if (!b.mu) return apply_kept<T, Mode, 1>(b, it, s);
    return apply_kept<T, Mode, 2>(b, it, s);
}

template <typename T>
DEADSPEC_ALWAYS_INLINE std::int64_t apply_impl(const SplitRef<T>& b, const SplitItem& it,
                                               SplitScratch<T>& s) {
    fit_rows(s, b.cols);
    const int mode = b.mode();
    if (mode == kSplitRow) return apply_cm<T, kSplitRow>(b, it, s);
    if (mode == kSplitCol) return apply_cm<T, kSplitCol>(b, it, s);
    return apply_cm<T, kSplitPlain>(b, it, s);
}

template <typename T>
std::int64_t apply_base(const SplitRef<T>& b, const SplitItem& it, SplitScratch<T>& s) {
    return apply_impl<T>(b, it, s);
}

#ifdef DEADSPEC_DDC_AVX2
template <typename T>
DEADSPEC_SPLIT_AVX2 std::int64_t apply_avx2(const SplitRef<T>& b, const SplitItem& it,
                                                        SplitScratch<T>& s) {
    return apply_impl<T>(b, it, s);
}
template <typename T>
DEADSPEC_SPLIT_AVX512 std::int64_t apply_avx512(const SplitRef<T>& b, const SplitItem& it,
                                              SplitScratch<T>& s) {
    return apply_impl<T>(b, it, s);
}
#endif

}  // namespace

template <typename T>
std::int64_t split_apply_rows(const SplitRef<T>& b, const SplitItem& it, SplitScratch<T>& s) {
#ifdef DEADSPEC_DDC_AVX2
    if (has_avx512()) return apply_avx512<T>(b, it, s);
    if (has_avx2_fma()) return apply_avx2<T>(b, it, s);
#endif
    return apply_base<T>(b, it, s);
}

template <typename T>
void split_rescue_columns(const SplitRef<T>& b, SplitScratch<T>& s, bool moments, double* ca,
                          double* cb) {
    if (!b.two_d) return;
    const std::int64_t n = b.cols;
    std::vector<std::int64_t> cols;
    for (std::int64_t j = 0; j < n; ++j)
        if (!std::isfinite(ca[j]) || (cb && !std::isfinite(cb[j]))) cols.push_back(j);
    if (cols.empty()) return;
    fit_rows(s, n);
    const T* mu = b.mu ? b.mu : s.zeros.data();
    std::vector<ScaledSum> sa(cols.size()), sb(cols.size());
    std::vector<char> ok(cols.size(), 1);
    for (std::int64_t i = 0; i < b.rows; ++i) {
        const RowScale<T> sc = row_scale(b, i, s);
        const T* gi = gather_row(b.g, i, b.gs0, b.gs1, n, s.gbuf);
        for (std::size_t q = 0; q < cols.size(); ++q) {
            if (!ok[q]) continue;
            const std::int64_t j = cols[q], k = i * n + j;
            const T xj = (b.x[k] * b.decay) * (sc.ir * sc.ics[j]);
            const double pc = static_cast<double>(xj - mu[j]);
            if (moments) {
                const T uj = split_update(b.m[k], b.v[k], b.hp.inv_bc2_sqrt, b.hp.step_size,
                                          b.hp.eps);
                ok[q] = add_term(sa[q], static_cast<double>(uj), pc);
            } else {
                const T gj = gi[j] * (sc.r * sc.cs[j]);
                ok[q] = add_term(sa[q], static_cast<double>(gj), pc) && add_term(sb[q], pc, pc);
            }
        }
    }
    for (std::size_t q = 0; q < cols.size(); ++q) {
        if (!ok[q]) continue;
        ca[cols[q]] = sa[q].value();
        if (cb) cb[cols[q]] = sb[q].value();
    }
}

#define DEADSPEC_SPLIT_APPLY(T)                                                                 \
    template std::int64_t split_apply_rows<T>(const SplitRef<T>&, const SplitItem&,             \
                                              SplitScratch<T>&);                                 \
    template void split_rescue_columns<T>(const SplitRef<T>&, SplitScratch<T>&, bool, double*,  \
                                          double*);
DEADSPEC_SPLIT_APPLY(float)
DEADSPEC_SPLIT_APPLY(double)
#undef DEADSPEC_SPLIT_APPLY

}  // namespace deadspec::detail
