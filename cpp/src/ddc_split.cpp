// SPDX-License-Identifier: Apache-2.0
// The split form of DDCAdam (form="split"): three passes over each block, the per-unit
// coefficients combined by the caller in between.
#include "deadspec/ddc.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "detail/core.hpp"
#include "detail/ddc_checks.hpp"
#include "detail/ddc_kernels.hpp"
#include "detail/scaled_sum.hpp"

namespace deadspec {

namespace {

constexpr const char* kSplitFn = "deadspec.ddc_split";

void check_split_block(const SplitBlock& b) {
    // param, grad, moments, hyper-parameters and rotation segments as a fused DDCAdam block
    AdamBlock a;
    a.param = b.param;
    a.grad = b.grad;
    a.exp_avg = b.exp_avg;
    a.exp_avg_sq = b.exp_avg_sq;
    a.hp = b.hp;
    a.rot_axis = b.rot_axis;
    a.rot_segments = b.rot_segments;
    detail::check_adam_block(a, kSplitFn);
    const TensorView& p = b.param;
    const std::int64_t h = p.shape[0];
    const bool two_d = p.ndim() == 2;
    for (const auto& [v, arg] : {std::pair{&b.row_scale, "row_scale"},
                                 std::pair{&b.row_coef, "row_coef"},
                                 std::pair{&b.row_mult, "row_mult"}})
        if (v->data) detail::check_vector(*v, h, kSplitFn, arg);
    for (const auto& [v, arg] :
         {std::pair{&b.col_scale, "col_scale"}, std::pair{&b.col_mean, "col_mean"},
          std::pair{&b.col_coef, "col_coef"}, std::pair{&b.col_norm, "col_norm"},
          std::pair{&b.col_mult, "col_mult"}}) {
        if (!v->data) continue;
        DEADSPEC_CHECK_ARG(two_d, kSplitFn, ": ", arg, " needs a 2-D param, got shape ",
                           p.shape_string());
        detail::check_vector(*v, p.shape[1], kSplitFn, arg);
    }
    // σ's factors are scales (the optimizer's ρ and 1/ρ): positive and finite with a finite
    // reciprocal once read in the parameter's dtype (the kernels form x̃ = x·(1/σ)); otherwise
    // x̃ has no value (a zero scale gave NaN from finite inputs)
    for (const auto& [v, arg] :
         {std::pair{&b.row_scale, "row_scale"}, std::pair{&b.col_scale, "col_scale"}}) {
        if (!v->data) continue;
        const std::int64_t n = v->shape[0];
        for (std::int64_t k = 0; k < n; ++k) {
            const double s = detail::element<double>(*v, k * v->stride(0));
            const bool f32 = p.dtype == DType::Float32;
            bool ok = s > 0.0 && std::isfinite(s) && std::isfinite(1.0 / s);
            if (ok && f32) {
                ok = s <= std::numeric_limits<float>::max();
                const float sf = ok ? static_cast<float>(s) : 0.0f;
                ok = ok && sf > 0.0f && std::isfinite(1.0f / sf);
            }
            DEADSPEC_CHECK_ARG(ok, kSplitFn, ": ", arg,
                               " must hold positive scales, finite with their reciprocals in the "
                               "parameter's dtype (",
                               f32 ? "float32" : "float64", "), got ", s,
                               " at index ", k);
        }
    }
    DEADSPEC_CHECK_ARG(!(b.row_coef.data && b.col_coef.data), kSplitFn,
                       ": a block is split along its rows or its columns, not both");
    DEADSPEC_CHECK_ARG(!b.col_coef.data || b.col_norm.data, kSplitFn,
                       ": col_coef needs col_norm");
    DEADSPEC_CHECK_ARG(!(b.col_mean.data && b.row_mult.data), kSplitFn,
                       ": a centred (col_mean) block takes no row_mult");
    const int axis = !two_d && b.rot_axis == 0 ? 0 : b.rot_axis;
    if (axis == 0 && !b.rot_segments.empty())
        DEADSPEC_CHECK_ARG(!b.row_scale.data, kSplitFn,
                           ": σ must be constant along rotated rows (no row_scale)");
    if (axis == 1 && !b.rot_segments.empty())
        DEADSPEC_CHECK_ARG(!b.col_scale.data, kSplitFn,
                           ": σ must be constant along rotated columns (no col_scale)");
}

// Row kernels of the split passes for 2-D blocks without rotated heads: plain loops over one
// row, vectorised for the ISA of the wrapper they are inlined into (baseline, or AVX2 chosen at
// run time, as the fused DDCAdam step). x̃ = x·(1/σ), g̃ = g·σ with σ and 1/σ given per row.
// The centring `mu` is a row of zeros for a block without one (x̃ − 0 is x̃ exactly).
enum SplitMode : int { kSplitPlain = 0, kSplitRow = 1, kSplitCol = 2 };

// (the quotient is formed unconditionally and then selected, so the loops stay branch-free and
// vectorise; 0/0 where the denominator is 0 is discarded)
template <typename T>
DEADSPEC_ALWAYS_INLINE T split_update(T mk, T vk, T ibc, T ss, T eps) {
    const T den = std::sqrt(vk) * ibc + eps;
    const T q = mk / den;
    return (den > T(0) ? q : T(0)) * ss;
}

// v minus its radial part along the block: a_i·x̃ along a row (kSplitRow), b_j·P x̃ along a
// column times the column norm n_j (kSplitCol), nothing (kSplitPlain). `b`, `nrm` are read only
// for kSplitCol. The tangential input (v = g̃) and the re-projected update (v = u) alike.
template <typename T, int Mode>
DEADSPEC_ALWAYS_INLINE T split_project(T v, T xj, T a, const T* __restrict b,
                                       const T* __restrict nrm, const T* __restrict mu,
                                       std::int64_t j) {
    if constexpr (Mode == kSplitRow) return v - a * xj;
    if constexpr (Mode == kSplitCol) return (v - b[j] * (xj - mu[j])) * nrm[j];
    return v;
}

template <typename T>
DEADSPEC_ALWAYS_INLINE void split_sums_loop(const T* __restrict x, const T* __restrict g,
                                            const T* __restrict sig, const T* __restrict isig,
                                            const T* __restrict mu, T* __restrict xt,
                                            T* __restrict gt, double* __restrict cgx,
                                            double* __restrict cxx, std::int64_t n) {
    for (std::int64_t j = 0; j < n; ++j) {
        xt[j] = x[j] * isig[j];
        gt[j] = g[j] * sig[j];
    }
    for (std::int64_t j = 0; j < n; ++j) {
        const double pc = static_cast<double>(xt[j] - mu[j]);
        cgx[j] += static_cast<double>(gt[j]) * pc;
        cxx[j] += pc * pc;
    }
}

template <typename T, int Mode>
DEADSPEC_ALWAYS_INLINE detail::CommitCount<T> split_moments_loop(
    const T* __restrict x, const T* __restrict g, T* __restrict m, T* __restrict v,
    const T* __restrict sig, const T* __restrict isig, T a, const T* __restrict b,
    const T* __restrict nrm, const T* __restrict mu, T* __restrict u, T* __restrict xt,
    double* __restrict cu, std::int64_t n, T b1, T b2, T ibc, T ss, T eps) {
    const T one = T(1);
    detail::CommitCount<T> refused = 0;
    for (std::int64_t j = 0; j < n; ++j) {
        const T xj = x[j] * isig[j];
        const T t = split_project<T, Mode>(g[j] * sig[j], xj, a, b, nrm, mu, j);
        const T mk = b1 * m[j] + (one - b1) * t;
        const T vk = b2 * v[j] + ((one - b2) * t) * t;  // AdamW's order: overflows where it does
        // (checked before written: non-finite moments keep their pre-step values, and the update
        // is that of the moments as stored, as pass 2 recomputes it)
        refused += detail::commit(m[j], v[j], mk, vk);
        u[j] = split_update(m[j], v[j], ibc, ss, eps);
        xt[j] = xj;
    }
    for (std::int64_t j = 0; j < n; ++j)
        cu[j] += static_cast<double>(u[j]) * static_cast<double>(xt[j] - mu[j]);
    return refused;
}

// The moments step in two halves, for rotated head blocks whose second-moment input (1−β₂)·t²
// is averaged over each head segment in between: the tangential input (t, (1−β₂)·t²), then the
// moments and the update from given (t, (1−β₂)·t²).
template <typename T, int Mode>
DEADSPEC_ALWAYS_INLINE void split_tangent_loop(const T* __restrict x, const T* __restrict g,
                                               const T* __restrict sig,
                                               const T* __restrict isig, T a,
                                               const T* __restrict b, const T* __restrict nrm,
                                               const T* __restrict mu, T* __restrict t,
                                               T* __restrict t2, std::int64_t n, T w2) {
    for (std::int64_t j = 0; j < n; ++j) {
        const T tj = split_project<T, Mode>(g[j] * sig[j], x[j] * isig[j], a, b, nrm, mu, j);
        t[j] = tj;
        t2[j] = (w2 * tj) * tj;
    }
}

template <typename T>
DEADSPEC_ALWAYS_INLINE detail::CommitCount<T> split_moments_t2_loop(
    const T* __restrict x, const T* __restrict isig, const T* __restrict mu,
    const T* __restrict t, const T* __restrict t2, T* __restrict m, T* __restrict v,
    T* __restrict u, T* __restrict xt, double* __restrict cu, std::int64_t n, T b1, T b2, T ibc,
    T ss, T eps) {
    const T one = T(1);
    detail::CommitCount<T> refused = 0;
    for (std::int64_t j = 0; j < n; ++j) {
        const T mk = b1 * m[j] + (one - b1) * t[j];
        const T vk = b2 * v[j] + t2[j];
        refused += detail::commit(m[j], v[j], mk, vk);
        u[j] = split_update(m[j], v[j], ibc, ss, eps);
        xt[j] = x[j] * isig[j];
    }
    for (std::int64_t j = 0; j < n; ++j)
        cu[j] += static_cast<double>(u[j]) * static_cast<double>(xt[j] - mu[j]);
    return refused;
}

// Cm: 0 no column factor, 1 x·c_j, 2 only the centred part scaled (x + (c_j − 1)·σ·P x̃).
template <typename T, int Mode, int Cm>
DEADSPEC_ALWAYS_INLINE detail::CommitCount<T> split_apply_loop(
    T* __restrict x, const T* __restrict m, const T* __restrict v, const T* __restrict sig,
    const T* __restrict isig, T a, const T* __restrict b, const T* __restrict nrm,
    const T* __restrict mu, T r, const T* __restrict c, std::int64_t n, T ibc, T ss, T eps) {
    detail::CommitCount<T> refused = 0;
    for (std::int64_t j = 0; j < n; ++j) {
        const T xj = x[j];
        const T xtj = xj * isig[j];
        const T u = split_project<T, Mode>(split_update(m[j], v[j], ibc, ss, eps), xtj, a, b, nrm,
                                           mu, j);
        T xn = xj * r;
        if constexpr (Cm == 1) xn = xn * c[j];
        if constexpr (Cm == 2) xn = xn + (c[j] - T(1)) * (sig[j] * (xtj - mu[j]));
        refused += detail::commit(x[j], xn - sig[j] * u);  // a non-finite x keeps its value
    }
    return refused;
}

template <typename T>
using SplitSumsFn = void (*)(const T*, const T*, const T*, const T*, const T*, T*, T*, double*,
                             double*, std::int64_t);
template <typename T>
using SplitMomentsFn = detail::CommitCount<T> (*)(const T*, const T*, T*, T*, const T*, const T*, T, const T*,
                                const T*, const T*, T*, T*, double*, std::int64_t, T, T, T, T,
                                T);
template <typename T>
using SplitApplyFn = detail::CommitCount<T> (*)(T*, const T*, const T*, const T*, const T*, T, const T*,
                              const T*, const T*, T, const T*, std::int64_t, T, T, T);

template <typename T>
void split_sums_base(const T* x, const T* g, const T* sig, const T* isig, const T* mu, T* xt,
                     T* gt, double* cgx, double* cxx, std::int64_t n) {
    split_sums_loop<T>(x, g, sig, isig, mu, xt, gt, cgx, cxx, n);
}
template <typename T, int Mode>
detail::CommitCount<T> split_moments_base(const T* x, const T* g, T* m, T* v, const T* sig, const T* isig, T a,
                        const T* b, const T* nrm, const T* mu, T* u, T* xt, double* cu,
                        std::int64_t n, T b1, T b2, T ibc, T ss, T eps) {
    return split_moments_loop<T, Mode>(x, g, m, v, sig, isig, a, b, nrm, mu, u, xt, cu, n, b1, b2, ibc,
                                ss, eps);
}
template <typename T, int Mode, int Cm>
detail::CommitCount<T> split_apply_base(T* x, const T* m, const T* v, const T* sig, const T* isig, T a,
                      const T* b, const T* nrm, const T* mu, T r, const T* c, std::int64_t n,
                      T ibc, T ss, T eps) {
    return split_apply_loop<T, Mode, Cm>(x, m, v, sig, isig, a, b, nrm, mu, r, c, n, ibc, ss, eps);
}

#ifdef DEADSPEC_DDC_AVX2
template <typename T>
__attribute__((target("avx2"))) void split_sums_avx2(const T* x, const T* g, const T* sig,
                                                     const T* isig, const T* mu, T* xt, T* gt,
                                                     double* cgx, double* cxx, std::int64_t n) {
    split_sums_loop<T>(x, g, sig, isig, mu, xt, gt, cgx, cxx, n);
}
template <typename T, int Mode>
__attribute__((target("avx2"))) detail::CommitCount<T> split_moments_avx2(
    const T* x, const T* g, T* m, T* v, const T* sig, const T* isig, T a, const T* b,
    const T* nrm, const T* mu, T* u, T* xt, double* cu, std::int64_t n, T b1, T b2, T ibc,
    T ss, T eps) {
    return split_moments_loop<T, Mode>(x, g, m, v, sig, isig, a, b, nrm, mu, u, xt, cu, n, b1, b2, ibc,
                                ss, eps);
}
template <typename T, int Mode, int Cm>
__attribute__((target("avx2"))) detail::CommitCount<T> split_apply_avx2(T* x, const T* m, const T* v,
                                                      const T* sig, const T* isig, T a,
                                                      const T* b, const T* nrm, const T* mu,
                                                      T r, const T* c, std::int64_t n, T ibc,
                                                      T ss, T eps) {
    return split_apply_loop<T, Mode, Cm>(x, m, v, sig, isig, a, b, nrm, mu, r, c, n, ibc, ss, eps);
}
#endif

template <typename T>
SplitSumsFn<T> pick_split_sums() {
#ifdef DEADSPEC_DDC_AVX2
    if (detail::has_avx2()) return &split_sums_avx2<T>;
#endif
    return &split_sums_base<T>;
}

template <typename T, int Mode>
SplitMomentsFn<T> pick_split_moments_mode() {
#ifdef DEADSPEC_DDC_AVX2
    if (detail::has_avx2()) return &split_moments_avx2<T, Mode>;
#endif
    return &split_moments_base<T, Mode>;
}

template <typename T>
SplitMomentsFn<T> pick_split_moments(int mode) {
    if (mode == kSplitRow) return pick_split_moments_mode<T, kSplitRow>();
    if (mode == kSplitCol) return pick_split_moments_mode<T, kSplitCol>();
    return pick_split_moments_mode<T, kSplitPlain>();
}

template <typename T, int Mode, int Cm>
SplitApplyFn<T> pick_split_apply_mc() {
#ifdef DEADSPEC_DDC_AVX2
    if (detail::has_avx2()) return &split_apply_avx2<T, Mode, Cm>;
#endif
    return &split_apply_base<T, Mode, Cm>;
}

template <typename T, int Mode>
SplitApplyFn<T> pick_split_apply_m(int cm) {
    if (cm == 1) return pick_split_apply_mc<T, Mode, 1>();
    if (cm == 2) return pick_split_apply_mc<T, Mode, 2>();
    return pick_split_apply_mc<T, Mode, 0>();
}

template <typename T>
SplitApplyFn<T> pick_split_apply(int mode, int cm) {
    if (mode == kSplitRow) return pick_split_apply_m<T, kSplitRow>(cm);
    if (mode == kSplitCol) return pick_split_apply_m<T, kSplitCol>(cm);
    return pick_split_apply_m<T, kSplitPlain>(cm);
}

// Σ a·b in float64 with eight partial sums in a fixed order (lanes the compiler can keep in
// vector registers; a single running sum could not be reordered without -ffast-math).
template <typename T>
double dot8(const T* __restrict a, const T* __restrict b, std::int64_t n) {
    double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    std::int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; ++k)
            acc[k] += static_cast<double>(a[j + k]) * static_cast<double>(b[j + k]);
    for (; j < n; ++j) acc[0] += static_cast<double>(a[j]) * static_cast<double>(b[j]);
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// dot8, or where it is not finite and every input is, the same sum scaled (detail::ScaledSum):
// ±inf only where the exact sum exceeds float64.
template <typename T>
double checked_dot(const T* a, const T* b, std::int64_t n) {
    const double r = dot8(a, b, n);
    if (std::isfinite(r)) return r;
    detail::ScaledSum acc;
    for (std::int64_t j = 0; j < n; ++j) {
        const double x = static_cast<double>(a[j]), y = static_cast<double>(b[j]);
        if (!std::isfinite(x) || !std::isfinite(y)) return r;
        acc.add(detail::term(x, y));
    }
    return acc.value();
}

// Adds a·b to a column's rescue sum; false (the column keeps its plain sum) for a non-finite
// factor.
inline bool add_term(detail::ScaledSum& acc, double a, double b) {
    if (!std::isfinite(a) || !std::isfinite(b)) return false;
    acc.add(detail::term(a, b));
    return true;
}

// One split block with its vectors read once, stepped row by row through the kernels above. A
// 1-D block is a column (h×1): each element is the row of its own unit (a producer's bias or a
// norm's γ, β).
template <typename T>
class SplitStep {
public:
    explicit SplitStep(const SplitBlock& b)
        : m_rs(detail::read_vector<T>(b.row_scale)),
          m_cs(detail::read_vector<T>(b.col_scale)),
          m_mu(detail::read_vector<T>(b.col_mean)),
          m_a(detail::read_vector<T>(b.row_coef)),
          m_bc(detail::read_vector<T>(b.col_coef)),
          m_n(detail::read_vector<T>(b.col_norm)),
          m_rm(detail::read_vector<T>(b.row_mult)),
          m_cm(detail::read_vector<T>(b.col_mult)),
          m_hp(b.hp) {
        const TensorView& p = b.param;
        m_x = static_cast<T*>(const_cast<void*>(p.data));
        m_m = static_cast<T*>(const_cast<void*>(b.exp_avg.data));
        m_v = static_cast<T*>(const_cast<void*>(b.exp_avg_sq.data));
        m_g = static_cast<const T*>(b.grad.data);
        m_rows = p.shape[0];
        m_two_d = p.ndim() == 2;
        m_cols = m_two_d ? p.shape[1] : 1;
        m_gs0 = b.grad.stride(0);
        m_gs1 = m_two_d ? b.grad.stride(1) : 1;
        m_axis = !m_two_d && b.rot_axis >= 0 ? 0 : b.rot_axis;  // a 1-D block's elements are rows
        m_segs = b.rot_segments;
        if (m_segs.empty()) m_axis = -1;
        m_ics.resize(m_cs.size());
        for (std::size_t j = 0; j < m_cs.size(); ++j) m_ics[j] = T(1) / m_cs[j];
        if (m_mu.empty()) m_zeros.assign(static_cast<std::size_t>(m_cols), T(0));
        m_mode = !m_a.empty() ? kSplitRow : (!m_bc.empty() ? kSplitCol : kSplitPlain);
    }

    SplitSums sums() const {
        SplitSums s;
        s.row_gx = Eigen::VectorXd::Zero(m_rows);
        s.row_xx = Eigen::VectorXd::Zero(m_rows);
        s.col_gx = Eigen::VectorXd::Zero(m_cols);
        s.col_xx = Eigen::VectorXd::Zero(m_cols);
        const auto n = static_cast<std::size_t>(m_cols);
        std::vector<T> sig(n), isig(n), xt(n), gt(n), gbuf;
        const SplitSumsFn<T> fn = pick_split_sums<T>();
        for (std::int64_t i = 0; i < m_rows; ++i) {
            scales_row(i, sig.data(), isig.data());
            fn(m_x + i * m_cols, grad_row(i, gbuf), sig.data(), isig.data(), mu_row(), xt.data(),
               gt.data(), s.col_gx.data(), s.col_xx.data(), m_cols);
            s.row_gx[i] = checked_dot(gt.data(), xt.data(), m_cols);
            s.row_xx[i] = checked_dot(xt.data(), xt.data(), m_cols);
        }
        rescue_columns(s.col_gx, s.col_xx, [&](std::int64_t i, std::int64_t j, const T* rsig,
                                               const T* risig, const T* gi,
                                               detail::ScaledSum& a, detail::ScaledSum& b) {
            const T xj = m_x[i * m_cols + j] * risig[j];
            const T gj = gi[j] * rsig[j];
            const double pc = static_cast<double>(xj - mu_row()[j]);
            return add_term(a, static_cast<double>(gj), pc) && add_term(b, pc, pc);
        });
        if (!m_two_d) s.col_gx.resize(0), s.col_xx.resize(0);  // a 1-D block has no columns
        return s;
    }

    std::pair<Eigen::VectorXd, Eigen::VectorXd> moments() const {
        auto out = m_axis >= 0 ? rotated_moments() : plain_moments();
        if (!m_two_d) out.second.resize(0);
        return out;
    }

    /// Elements refused so far by moments() / apply() (a non-finite result, not written).
    std::int64_t refused() const { return m_refused; }

    void apply() const {
        const auto n = static_cast<std::size_t>(m_cols);
        std::vector<T> sig(n), isig(n);
        const int cm = m_cm.empty() ? 0 : (m_mu.empty() ? 1 : 2);
        const SplitApplyFn<T> fn = pick_split_apply<T>(m_mode, cm);
        for (std::int64_t i = 0; i < m_rows; ++i) {
            scales_row(i, sig.data(), isig.data());
            const T r = m_rm.empty() ? T(1) : m_rm[static_cast<std::size_t>(i)];
            m_refused += static_cast<std::int64_t>(
                fn(m_x + i * m_cols, m_m + i * m_cols, m_v + i * m_cols, sig.data(), isig.data(),
                   row_coef(i), m_bc.data(), m_n.data(), mu_row(), r, m_cm.data(), m_cols,
                   m_hp.inv_bc2_sqrt, m_hp.step_size, m_hp.eps));
        }
    }

private:
    // σ and 1/σ along row i (x̃ = x·(1/σ), g̃ = g·σ).
    void scales_row(std::int64_t i, T* sig, T* isig) const {
        const T r = m_rs.empty() ? T(1) : m_rs[static_cast<std::size_t>(i)];
        const T ir = m_rs.empty() ? T(1) : T(1) / r;
        if (m_cs.empty()) {
            std::fill(sig, sig + m_cols, r);
            std::fill(isig, isig + m_cols, ir);
            return;
        }
        for (std::int64_t j = 0; j < m_cols; ++j) {
            sig[j] = r * m_cs[static_cast<std::size_t>(j)];
            isig[j] = ir * m_ics[static_cast<std::size_t>(j)];
        }
    }

    const T* grad_row(std::int64_t i, std::vector<T>& buf) const {
        return detail::gather_row(m_g, i, m_gs0, m_gs1, m_cols, buf);
    }
    const T* mu_row() const { return m_mu.empty() ? m_zeros.data() : m_mu.data(); }
    T row_coef(std::int64_t i) const {
        return m_a.empty() ? T(0) : m_a[static_cast<std::size_t>(i)];
    }

    std::pair<Eigen::VectorXd, Eigen::VectorXd> plain_moments() const {
        Eigen::VectorXd ru = Eigen::VectorXd::Zero(m_rows), cu = Eigen::VectorXd::Zero(m_cols);
        const auto n = static_cast<std::size_t>(m_cols);
        std::vector<T> sig(n), isig(n), u(n), xt(n), gbuf;
        const SplitMomentsFn<T> fn = pick_split_moments<T>(m_mode);
        for (std::int64_t i = 0; i < m_rows; ++i) {
            scales_row(i, sig.data(), isig.data());
            m_refused += static_cast<std::int64_t>(fn(
                m_x + i * m_cols, grad_row(i, gbuf), m_m + i * m_cols, m_v + i * m_cols,
                sig.data(), isig.data(), row_coef(i), m_bc.data(), m_n.data(), mu_row(), u.data(),
                xt.data(), cu.data(), m_cols, m_hp.b1, m_hp.b2, m_hp.inv_bc2_sqrt, m_hp.step_size,
                m_hp.eps));
            ru[i] = checked_dot(u.data(), xt.data(), m_cols);
        }
        rescue_moment_columns(cu);
        return {ru, cu};
    }

    void tangent_row(std::int64_t i, const T* sig, const T* isig, const T* gi, T* t,
                     T* t2) const {
        const T* x = m_x + i * m_cols;
        const T a = row_coef(i);
        const T w2 = T(1) - m_hp.b2;
        if (m_mode == kSplitRow)
            split_tangent_loop<T, kSplitRow>(x, gi, sig, isig, a, nullptr, nullptr, mu_row(), t,
                                             t2, m_cols, w2);
        else if (m_mode == kSplitCol)
            split_tangent_loop<T, kSplitCol>(x, gi, sig, isig, a, m_bc.data(), m_n.data(),
                                             mu_row(), t, t2, m_cols, w2);
        else
            split_tangent_loop<T, kSplitPlain>(x, gi, sig, isig, a, nullptr, nullptr, mu_row(),
                                               t, t2, m_cols, w2);
    }

    // Rotated head blocks: (1−β₂)·t² averaged over each head segment (along the row for axis 1, over
    // the segment's rows per column for axis 0) before it enters v.
    std::pair<Eigen::VectorXd, Eigen::VectorXd> rotated_moments() const {
        Eigen::VectorXd ru = Eigen::VectorXd::Zero(m_rows), cu = Eigen::VectorXd::Zero(m_cols);
        const auto n = static_cast<std::size_t>(m_cols);
        const bool whole = m_axis == 0;
        const std::size_t kept = whole ? static_cast<std::size_t>(m_rows) : 1;
        std::vector<T> sig(n), isig(n), t(kept * n), t2(kept * n), u(n), xt(n), gbuf;
        auto update = [&](std::int64_t i, const T* ti, const T* t2i) {
            scales_row(i, sig.data(), isig.data());
            m_refused += static_cast<std::int64_t>(split_moments_t2_loop<T>(
                m_x + i * m_cols, isig.data(), mu_row(), ti, t2i, m_m + i * m_cols,
                m_v + i * m_cols, u.data(), xt.data(), cu.data(), m_cols, m_hp.b1, m_hp.b2,
                m_hp.inv_bc2_sqrt, m_hp.step_size, m_hp.eps));
            ru[i] = checked_dot(u.data(), xt.data(), m_cols);
        };
        if (!whole) {
            for (std::int64_t i = 0; i < m_rows; ++i) {
                scales_row(i, sig.data(), isig.data());
                tangent_row(i, sig.data(), isig.data(), grad_row(i, gbuf), t.data(), t2.data());
                detail::mean_within_segments(t2.data(), m_segs);
                update(i, t.data(), t2.data());
            }
            return {ru, cu};
        }
        for (std::int64_t i = 0; i < m_rows; ++i) {
            scales_row(i, sig.data(), isig.data());
            const auto off = static_cast<std::size_t>(i) * n;
            tangent_row(i, sig.data(), isig.data(), grad_row(i, gbuf), t.data() + off,
                        t2.data() + off);
        }
        for (const auto& [a, e] : m_segs) {
            for (std::size_t j = 0; j < n; ++j) {
                T sum = T(0);
                for (std::int64_t i = a; i < e; ++i) sum += t2[static_cast<std::size_t>(i) * n + j];
                const T mean = sum / static_cast<T>(e - a);
                for (std::int64_t i = a; i < e; ++i) t2[static_cast<std::size_t>(i) * n + j] = mean;
            }
        }
        for (std::int64_t i = 0; i < m_rows; ++i) {
            const auto off = static_cast<std::size_t>(i) * n;
            update(i, t.data() + off, t2.data() + off);
        }
        rescue_moment_columns(cu);
        return {ru, cu};
    }

    // Columns whose plain sums (of the pair the kernel accumulates) are not finite, summed again
    // scaled over the rows: ±inf only where the exact sum exceeds float64. `terms(i, j, σ, 1/σ,
    // g row, a, b)` adds row i's terms of column j, false for a non-finite factor (the column
    // keeps its plain sums).
    template <typename F>
    void rescue_columns(Eigen::VectorXd& ca, Eigen::VectorXd& cb, F&& terms) const {
        if (!m_two_d) return;
        std::vector<std::int64_t> cols;
        for (std::int64_t j = 0; j < m_cols; ++j)
            if (!std::isfinite(ca[j]) || (cb.size() && !std::isfinite(cb[j]))) cols.push_back(j);
        if (cols.empty()) return;
        const auto n = static_cast<std::size_t>(m_cols);
        std::vector<T> sig(n), isig(n), gbuf;
        std::vector<detail::ScaledSum> a(cols.size()), b(cols.size());
        std::vector<char> ok(cols.size(), 1);
        for (std::int64_t i = 0; i < m_rows; ++i) {
            scales_row(i, sig.data(), isig.data());
            const T* gi = grad_row(i, gbuf);
            for (std::size_t k = 0; k < cols.size(); ++k)
                if (ok[k] && !terms(i, cols[k], sig.data(), isig.data(), gi, a[k], b[k]))
                    ok[k] = 0;
        }
        for (std::size_t k = 0; k < cols.size(); ++k) {
            if (!ok[k]) continue;
            ca[cols[k]] = a[k].value();
            if (cb.size()) cb[cols[k]] = b[k].value();
        }
    }

    // The moments' column sums Σ u·P x̃, u from the moments as stored (after this step's commit).
    void rescue_moment_columns(Eigen::VectorXd& cu) const {
        Eigen::VectorXd none;
        rescue_columns(cu, none, [&](std::int64_t i, std::int64_t j, const T*, const T* isig,
                                     const T*, detail::ScaledSum& a, detail::ScaledSum&) {
            const std::int64_t k = i * m_cols + j;
            const T uj = split_update(m_m[k], m_v[k], m_hp.inv_bc2_sqrt, m_hp.step_size, m_hp.eps);
            const T xj = m_x[k] * isig[j];
            return add_term(a, static_cast<double>(uj), static_cast<double>(xj - mu_row()[j]));
        });
    }

    std::vector<T> m_rs, m_cs, m_mu, m_a, m_bc, m_n, m_rm, m_cm;
    detail::AdamScalars<T> m_hp;
    std::vector<T> m_ics, m_zeros;
    int m_mode = kSplitPlain;
    T *m_x = nullptr, *m_m = nullptr, *m_v = nullptr;
    const T* m_g = nullptr;
    std::int64_t m_rows = 0, m_cols = 0, m_gs0 = 0, m_gs1 = 0;
    bool m_two_d = false;
    int m_axis = -1;
    std::vector<std::pair<std::int64_t, std::int64_t>> m_segs;
    mutable std::int64_t m_refused = 0;
};

template <typename F>
auto split_each(const std::vector<SplitBlock>& blocks, F&& f) {
    for (const SplitBlock& b : blocks) check_split_block(b);
    using R = decltype(f(SplitStep<double>(blocks.front())));
    std::vector<R> out;
    out.reserve(blocks.size());
    for (const SplitBlock& b : blocks) {
        if (b.param.dtype == DType::Float64)
            out.push_back(f(SplitStep<double>(b)));
        else
            out.push_back(f(SplitStep<float>(b)));
    }
    return out;
}

}  // namespace

std::vector<SplitSums> ddc_split_sums(const std::vector<SplitBlock>& blocks) {
    if (blocks.empty()) return {};
    return split_each(blocks, [](const auto& s) { return s.sums(); });
}

std::vector<std::pair<Eigen::VectorXd, Eigen::VectorXd>> ddc_split_moments(
    const std::vector<SplitBlock>& blocks, std::vector<std::int64_t>& refused) {
    refused.assign(blocks.size(), 0);
    if (blocks.empty()) return {};
    auto res = split_each(blocks, [](const auto& s) {
        auto dots = s.moments();
        return std::make_pair(std::move(dots), s.refused());
    });
    std::vector<std::pair<Eigen::VectorXd, Eigen::VectorXd>> out;
    out.reserve(res.size());
    for (std::size_t k = 0; k < res.size(); ++k) {
        refused[k] = res[k].second;
        out.push_back(std::move(res[k].first));
    }
    return out;
}

void ddc_split_apply(const std::vector<SplitBlock>& blocks, std::vector<std::int64_t>& refused) {
    refused.assign(blocks.size(), 0);
    if (blocks.empty()) return;
    const auto res = split_each(blocks, [](const auto& s) {
        s.apply();
        return s.refused();
    });
    std::copy(res.begin(), res.end(), refused.begin());
}

namespace {
void throw_refused(const std::vector<std::int64_t>& refused, const char* pass) {
    for (std::size_t k = 0; k < refused.size(); ++k)
        if (refused[k] > 0)
            throw Error(detail::concat("deadspec.", pass,
                                       ": the step must produce finite values, got ", refused[k],
                                       " element(s) of block ", k,
                                       " whose new values overflowed (they keep their pre-step "
                                       "values)"));
}
}  // namespace

std::vector<std::pair<Eigen::VectorXd, Eigen::VectorXd>> ddc_split_moments(
    const std::vector<SplitBlock>& blocks) {
    std::vector<std::int64_t> refused;
    auto out = ddc_split_moments(blocks, refused);
    throw_refused(refused, "ddc_split_moments");
    return out;
}

void ddc_split_apply(const std::vector<SplitBlock>& blocks) {
    std::vector<std::int64_t> refused;
    ddc_split_apply(blocks, refused);
    throw_refused(refused, "ddc_split_apply");
}

}  // namespace deadspec
