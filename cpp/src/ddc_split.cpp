// SPDX-License-Identifier: Apache-2.0
// The split form of DDCAdam (form="split"), one block at a time: three passes over each block,
// the per-unit coefficients combined by the caller in between (the row passes are the plan's:
// detail/split_rows.hpp).
#include "deadspec/ddc.hpp"
#include "deadspec/ddc_split_plan.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "detail/core.hpp"
#include "detail/ddc_checks.hpp"
#include "detail/ddc_kernels.hpp"
#include "detail/split_rows.hpp"

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
    // (x is read as x·decay, and a refused element keeps that: finite from a finite x)
    DEADSPEC_CHECK_ARG(std::abs(b.hp.decay) <= 1.0, kSplitFn,
                       ": decay must be in [-1, 1] (lr·weight_decay <= 2), got ", b.hp.decay);
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

// One split block with its vectors read once, stepped item by item through the row passes
// (detail/split_rows.hpp, the plan's own). A 1-D block is a column (h×1): each element is the
// row of its own unit (a producer's bias or a norm's γ, β).
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
          m_segs(b.rot_segments) {
        const TensorView& p = b.param;
        detail::SplitRef<T>& r = m_ref;
        r.x = static_cast<T*>(const_cast<void*>(p.data));
        r.m = static_cast<T*>(const_cast<void*>(b.exp_avg.data));
        r.v = static_cast<T*>(const_cast<void*>(b.exp_avg_sq.data));
        r.g = static_cast<const T*>(b.grad.data);
        r.two_d = p.ndim() == 2;
        r.rows = p.shape[0];
        r.cols = r.two_d ? p.shape[1] : 1;
        r.gs0 = b.grad.stride(0);
        r.gs1 = r.two_d ? b.grad.stride(1) : 1;
        r.decay = static_cast<T>(b.hp.decay);
        r.hp = detail::AdamScalars<T>(b.hp);
        m_ics.resize(m_cs.size());
        for (std::size_t j = 0; j < m_cs.size(); ++j) m_ics[j] = T(1) / m_cs[j];
        r.rs = data(m_rs);
        r.cs = data(m_cs);
        r.ics = data(m_ics);
        r.mu = data(m_mu);
        r.a = data(m_a);
        r.bc = data(m_bc);
        r.nrm = data(m_n);
        r.rm = data(m_rm);
        r.cm = data(m_cm);
        // (a 1-D block's elements are its rows)
        r.axis = m_segs.empty() ? -1 : (!r.two_d && b.rot_axis >= 0 ? 0 : b.rot_axis);
        r.segs = &m_segs;
        m_items = detail::split_items(r.rows, r.cols, r.axis, &m_segs);
    }

    SplitSums sums() const {
        SplitSums s;
        s.row_gx = Eigen::VectorXd::Zero(m_ref.rows);
        s.row_xx = Eigen::VectorXd::Zero(m_ref.rows);
        const bool cols = m_ref.two_d;
        std::vector<double> pa(cols ? m_items.size() * static_cast<std::size_t>(m_ref.cols) : 0);
        std::vector<double> pb(pa.size());
        for (std::size_t k = 0; k < m_items.size(); ++k) {
            const std::size_t off = k * static_cast<std::size_t>(m_ref.cols);
            detail::split_sums_rows(m_ref, m_items[k], m_scratch, s.row_gx.data(),
                                    s.row_xx.data(), cols ? pa.data() + off : nullptr,
                                    cols ? pb.data() + off : nullptr, nullptr);
        }
        if (!cols) return s;  // (a 1-D block has no columns)
        s.col_gx.resize(m_ref.cols);
        s.col_xx.resize(m_ref.cols);
        detail::split_sum_parts(pa, m_items.size(), m_ref.cols, s.col_gx.data());
        detail::split_sum_parts(pb, m_items.size(), m_ref.cols, s.col_xx.data());
        detail::split_rescue_columns(m_ref, m_scratch, false, s.col_gx.data(), s.col_xx.data());
        return s;
    }

    std::pair<Eigen::VectorXd, Eigen::VectorXd> moments() const {
        Eigen::VectorXd ru = Eigen::VectorXd::Zero(m_ref.rows), cu;
        const bool cols = m_ref.two_d;
        std::vector<double> pa(cols ? m_items.size() * static_cast<std::size_t>(m_ref.cols) : 0);
        for (std::size_t k = 0; k < m_items.size(); ++k) {
            const std::size_t off = k * static_cast<std::size_t>(m_ref.cols);
            m_refused += detail::split_moments_rows(m_ref, m_items[k], m_scratch, ru.data(),
                                                    cols ? pa.data() + off : nullptr);
        }
        if (cols) {
            cu.resize(m_ref.cols);
            detail::split_sum_parts(pa, m_items.size(), m_ref.cols, cu.data());
            detail::split_rescue_columns(m_ref, m_scratch, true, cu.data(), nullptr);
        }
        return {ru, cu};
    }

    void apply() const {
        for (const detail::SplitItem& it : m_items)
            m_refused += detail::split_apply_rows(m_ref, it, m_scratch);
    }

    /// Elements refused so far by moments() / apply() (a non-finite result, not written).
    std::int64_t refused() const { return m_refused; }

private:
    static const T* data(const std::vector<T>& v) { return v.empty() ? nullptr : v.data(); }

    std::vector<T> m_rs, m_cs, m_mu, m_a, m_bc, m_n, m_rm, m_cm, m_ics;
    detail::Segments m_segs;
    detail::SplitRef<T> m_ref;
    std::vector<detail::SplitItem> m_items;
    mutable detail::SplitScratch<T> m_scratch;
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

namespace {

template <typename T>
std::int64_t split_units_as(const SplitUnitsArgs& a, const std::vector<char>& gauged) {
    const std::int64_t h = a.exp_avg.shape[0];
    const auto n = static_cast<std::size_t>(h);
    const std::vector<T> q = detail::read_vector<T>(a.q), gi = detail::read_vector<T>(a.g_in),
                         n2 = detail::read_vector<T>(a.n2), go = detail::read_vector<T>(a.g_out),
                         gy = detail::read_vector<T>(a.g_only);
    T* out = static_cast<T*>(const_cast<void*>(a.out.data));
    auto row = [&](std::size_t r) { return out + r * n; };
    const detail::SplitUnits<T> u{q.data(), gi.data(), n2.data(), go.data(), gy.data(),
                                  gauged.data(),
                                  static_cast<T*>(const_cast<void*>(a.exp_avg.data)),
                                  static_cast<T*>(const_cast<void*>(a.exp_avg_sq.data)),
                                  row(0), row(1), row(2), row(3), row(4), row(5), row(6), row(7)};
    const std::int64_t refused = detail::split_units(u, h, a.step, a.beta1, a.beta2, a.eps);
    for (std::size_t l = 0; l < a.lrs.size(); ++l) {
        const T lr = static_cast<T>(a.lrs[l]);
        for (std::size_t k = 0; k < n; ++k) row(8 + l)[k] = std::exp(lr * row(4)[k]);
    }
    return refused;
}

}  // namespace

std::int64_t ddc_split_units(const SplitUnitsArgs& a, const char* fn) {
    detail::check_cpu_float(a.exp_avg, fn, "exp_avg");
    DEADSPEC_CHECK_ARG(a.exp_avg.ndim() == 1, fn, ": exp_avg must be 1-D, got shape ",
                       a.exp_avg.shape_string());
    const std::int64_t h = a.exp_avg.shape[0];
    const DType dt = a.exp_avg.dtype;
    detail::check_same_layout(a.exp_avg, a.exp_avg, "exp_avg", true, fn);
    detail::check_same_layout(a.exp_avg, a.exp_avg_sq, "exp_avg_sq", true, fn);
    for (const auto& [v, arg] : {std::pair{&a.q, "q"}, std::pair{&a.g_in, "g_in"},
                                 std::pair{&a.n2, "n2"}, std::pair{&a.g_out, "g_out"},
                                 std::pair{&a.g_only, "g_only"}}) {
        detail::check_vector(*v, h, fn, arg);
        DEADSPEC_CHECK_ARG(v->dtype == dt, fn, ": ", arg, " must have exp_avg's dtype ",
                           dtype_name(dt), ", got ", dtype_name(v->dtype));
    }
    const std::int64_t rows = 8 + static_cast<std::int64_t>(a.lrs.size());
    detail::check_cpu_float(a.out, fn, "out");
    const bool out_ok = a.out.ndim() == 2 && a.out.shape[0] == rows && a.out.shape[1] == h &&
                        a.out.dtype == dt && a.out.is_contiguous() && !a.out.read_only;
    DEADSPEC_CHECK_ARG(out_ok,
                       fn, ": out must be a writable contiguous ", dtype_name(dt), " tensor of "
                       "shape (", rows, ", ", h, "), got ", dtype_name(a.out.dtype), " of shape ",
                       a.out.shape_string());
    DEADSPEC_CHECK_ARG(a.step >= 1, fn, ": step must be >= 1, got ", a.step);
    DEADSPEC_CHECK_ARG(a.beta1 >= 0.0 && a.beta1 < 1.0 && a.beta2 >= 0.0 && a.beta2 < 1.0, fn,
                       ": betas must be in [0, 1), got (", a.beta1, ", ", a.beta2, ")");
    DEADSPEC_CHECK_ARG(a.eps >= 0.0, fn, ": eps must be >= 0, got ", a.eps);
    for (const double lr : a.lrs)
        DEADSPEC_CHECK_ARG(std::isfinite(lr), fn, ": lrs must be finite, got ", lr);
    std::vector<char> gauged(static_cast<std::size_t>(h), a.units.empty() ? 1 : 0);
    for (const std::int64_t u : a.units) {
        DEADSPEC_CHECK_ARG(u >= 0 && u < h && !gauged[static_cast<std::size_t>(u)], fn,
                           ": units must be distinct indices in [0, ", h, "), got ", u);
        gauged[static_cast<std::size_t>(u)] = 1;
    }
    return dt == DType::Float64 ? split_units_as<double>(a, gauged)
                                : split_units_as<float>(a, gauged);
}

}  // namespace deadspec
