// SPDX-License-Identifier: Apache-2.0
// The split form's per-element helpers, shared by its row passes (ddc_split_rows.cpp: passes 0
// and 1) and its apply (ddc_split_apply.cpp: pass 2 and the column rescue). Private to those two
// files: everything is in an anonymous namespace and is inlined into the ISA wrapper of the file
// that calls it (baseline, AVX2 or AVX-512, chosen at run time).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "scaled_sum.hpp"
#include "split_rows.hpp"

// A lambda inlined into the ISA wrapper it is called from (a lambda does not take the target of
// its enclosing function, so one left out of line runs the baseline loops).
#if defined(__GNUC__) || defined(__clang__)
#define DEADSPEC_LAMBDA_INLINE __attribute__((always_inline))
#else
#define DEADSPEC_LAMBDA_INLINE
#endif

namespace deadspec::detail {

namespace {

// lr/(1−β₁ᵗ)·m/(√v/√(1−β₂ᵗ) + ε), 0 where the denominator is 0 (ε = 0 on a coordinate whose
// moments are both 0). The quotient is formed unconditionally and then selected, so the loops
// stay branch-free and vectorise; 0/0 where the denominator is 0 is discarded.
template <typename T>
DEADSPEC_ALWAYS_INLINE T split_update(T mk, T vk, T ibc, T ss, T eps) {
    const T den = std::sqrt(vk) * ibc + eps;
    const T q = mk / den;
    return (den > T(0) ? q : T(0)) * ss;
}

// v minus its radial part along the block (SplitMode): the tangential input (v = g̃) and the
// re-projected update (v = u) alike. `b`, `nrm` are read only for kSplitCol.
template <typename T, int Mode>
DEADSPEC_ALWAYS_INLINE T split_project(T v, T xj, T a, const T* __restrict b,
                                       const T* __restrict nrm, const T* __restrict mu,
                                       std::int64_t j) {
    if constexpr (Mode == kSplitRow) return v - a * xj;
    if constexpr (Mode == kSplitCol) return (v - b[j] * (xj - mu[j])) * nrm[j];
    return v;
}

// The float64 row sums: element j of a row goes to partial sum j mod kLanes, the partial sums
// added pairwise at the end (a fixed order: every ISA's loop gives the same bits; a single
// running sum could not be reordered without -ffast-math). 32 lanes are four 8-wide registers
// per sum: independent chains, so that the adds' latency does not bound the loop.
constexpr int kLanes = 32;

// c + a·b, as a fused multiply-add where `Fma` (the AVX2/AVX-512 loops): the product of two
// float32 values is exact in float64, so both forms round once and give the same bits. (Float64
// inputs keep the separate multiply and add: their product is not exact.)
template <bool Fma>
DEADSPEC_ALWAYS_INLINE double madd(double a, double b, double c) {
    if constexpr (Fma) return __builtin_fma(a, b, c);
    return c + a * b;
}

DEADSPEC_ALWAYS_INLINE double lanes_sum(double* acc) {
    for (int w = kLanes / 2; w >= 1; w /= 2)
        for (int k = 0; k < w; ++k) acc[k] += acc[k + w];
    return acc[0];
}

// σ along row i in factors, formed where used (σ_j = r·c_j, 1/σ_j = (1/r)·(1/c_j); `ones` for a
// block without column factors).
template <typename T>
struct RowScale {
    T r, ir;
    const T* cs;
    const T* ics;
};

template <typename T>
DEADSPEC_ALWAYS_INLINE RowScale<T> row_scale(const SplitRef<T>& b, std::int64_t i,
                                            const SplitScratch<T>& s) {
    const T r = b.rs ? b.rs[i] : T(1);
    const T ir = b.rs ? T(1) / r : T(1);
    return {r, ir, b.cs ? b.cs : s.ones.data(), b.cs ? b.ics : s.ones.data()};
}

// Where a row sum is not finite and every input is: the same sum scaled (±inf only where the exact
// sum exceeds float64).
template <typename T>
double rescue_dot(double r, const T* a, const T* b, std::int64_t n) {
    ScaledSum acc;
    for (std::int64_t j = 0; j < n; ++j) {
        const double x = static_cast<double>(a[j]), y = static_cast<double>(b[j]);
        if (!std::isfinite(x) || !std::isfinite(y)) return r;
        acc.add(term(x, y));
    }
    return acc.value();
}

// Adds a·b to a column's rescue sum; false (the column keeps its plain sum) for a non-finite
// factor.
inline bool add_term(ScaledSum& acc, double a, double b) {
    if (!std::isfinite(a) || !std::isfinite(b)) return false;
    acc.add(term(a, b));
    return true;
}

template <typename T>
void fit(std::vector<T>& v, std::size_t n) {
    if (v.size() < n) v.resize(n);
}

// (called at the start of every item)
template <typename T>
void fit_rows(SplitScratch<T>& s, std::int64_t cols) {
    const auto n = static_cast<std::size_t>(cols);
    for (auto* v : {&s.xt, &s.gt, &s.u}) fit(*v, n);
    if (s.zeros.size() < n) s.zeros.assign(n, T(0));
    if (s.ones.size() < n) s.ones.assign(n, T(1));
}

// Rows taken at once by the column-only loops (pass 0's column sums, pass 1's moments, pass 2's
// apply): each column's sums still take the rows in row order.
constexpr int kRowBlock = 4;

// The check before commit of new moments (mk, vk): where either is not finite they become the
// pre-step (m0, v0) (detail::commit on values, so that the loops vectorise); 1 when refused.
template <typename T>
DEADSPEC_ALWAYS_INLINE CommitCount<T> keep_finite(T m0, T v0, T& mk, T& vk) {
    const bool ok = ((mk - mk) + (vk - vk)) == T(0);
    mk = pick(ok, mk, m0);
    vk = pick(ok, vk, v0);
    return ok ? CommitCount<T>(0) : CommitCount<T>(1);
}

#ifdef DEADSPEC_DDC_AVX2
// The ISAs' targets, with fused multiply-adds (madd); the AVX2 loops run where FMA does.
#define DEADSPEC_SPLIT_AVX2 __attribute__((target("avx2,fma")))
#define DEADSPEC_SPLIT_AVX512 \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma,prefer-vector-width=512")))
inline bool has_avx2_fma() {
    static const bool yes = has_avx2() && __builtin_cpu_supports("fma") != 0;
    return yes;
}
#endif

}  // namespace

}  // namespace deadspec::detail
