// SPDX-License-Identifier: Apache-2.0
// DDCAdam for C++ trainers: the declared sites, their scales ρ in topological order, the step.
#include "deadspec/ddc_adam.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <utility>

#include "deadspec/errors.hpp"
#include "detail/core.hpp"
#include "detail/ddc_checks.hpp"
#include "detail/ddc_kernels.hpp"

namespace deadspec {

namespace {

using detail::buffer_view;

constexpr const char* kFn = "deadspec.DDCAdam";
constexpr const char* kStepFn = "deadspec.DDCAdam.step";

template <typename T>
void store_scales(const Eigen::VectorXd& values, const std::vector<std::int64_t>& units,
                  std::vector<std::byte>& rho, std::vector<std::byte>& inv) {
    // As Python's site_rho: ρ rounded to the producer's dtype, 1 at or below its smallest normal
    // (a zero row is not scaled), where it or its reciprocal's reciprocal overflows the dtype (a
    // unit too large for its scale to be represented is not scaled either: it gets AdamW's step)
    // and outside `units`; 1/ρ divided in that dtype.
    const auto n = static_cast<std::size_t>(values.size());
    rho.assign(n * sizeof(T), std::byte{0});
    inv.assign(n * sizeof(T), std::byte{0});
    T* r = reinterpret_cast<T*>(rho.data());
    T* q = reinterpret_cast<T*>(inv.data());
    std::vector<char> gauged(n, units.empty() ? 1 : 0);
    for (const std::int64_t u : units) gauged[static_cast<std::size_t>(u)] = 1;
    for (std::size_t i = 0; i < n; ++i) {
        const T v = static_cast<T>(values[static_cast<Eigen::Index>(i)]);
        const bool ok = v > std::numeric_limits<T>::min() && std::isfinite(v) &&
                        std::isfinite(T(1) / (T(1) / v));  // (1/ρ's reciprocal: a column scale)
        r[i] = gauged[i] && ok ? v : T(1);
        q[i] = T(1) / r[i];
    }
}

// max |g| of a gradient, NaN when an entry is not finite (the non-finite check and the overflow
// screen's bound in one pass).
template <typename T>
double max_abs(const TensorView& g) {
    const T* p = static_cast<const T*>(g.data);
    double top = 0.0;
    auto see = [&top](T a) {
        if (!std::isfinite(a)) return false;
        top = std::max(top, static_cast<double>(std::abs(a)));
        return true;
    };
    if (g.is_contiguous()) {
        const std::int64_t n = g.numel();
        for (std::int64_t k = 0; k < n; ++k)
            if (!see(p[k])) return std::numeric_limits<double>::quiet_NaN();
        return top;
    }
    // A site block's gradient: 1-D or 2-D, any strides (checked before).
    const std::int64_t rows = g.shape[0], cols = g.ndim() == 2 ? g.shape[1] : 1;
    const std::int64_t s0 = g.stride(0), s1 = g.ndim() == 2 ? g.stride(1) : 0;
    for (std::int64_t i = 0; i < rows; ++i)
        for (std::int64_t j = 0; j < cols; ++j)
            if (!see(p[i * s0 + j * s1])) return std::numeric_limits<double>::quiet_NaN();
    return top;
}

double grad_max_abs(const TensorView& g) {
    return g.dtype == DType::Float64 ? max_abs<double>(g) : max_abs<float>(g);
}

// The overflow screen of Python's DDCAdam (optim/_functional.py, screen_safe), with max |g̃| ≤
// gmax·max σ: the step cannot write a non-finite value (x within a factor 2 of the dtype's
// largest value aside), so the kernel may skip its per-element keep and only count. The
// optimizer owns its moments, made from zero: |m̂|/√v̂ ≤ R below.
bool screen_safe(double gmax, double sigma_max, const AdamStep& hp, DType dtype) {
    const double big = dtype == DType::Float64 ? std::numeric_limits<double>::max()
                                               : std::numeric_limits<float>::max();
    const double b1 = hp.beta1, b2 = hp.beta2;
    if (!(hp.eps > 0.0 && std::abs(hp.decay) <= 1.0 && b1 < std::sqrt(b2))) return false;
    const double r = (1 - b1) / (std::sqrt(1 - b2) * (1 - b1 / std::sqrt(b2)) * (1 - b1));
    return gmax * sigma_max <= std::sqrt(big) / 16 && hp.lr * r * sigma_max <= big / 16;
}

// max and min of a site's scales (ρ or 1/ρ, in the producer's dtype).
std::pair<double, double> extremes(const std::vector<std::byte>& buf, DType dtype) {
    double hi = 0.0, lo = std::numeric_limits<double>::infinity();
    const std::size_t n = buf.size() / static_cast<std::size_t>(dtype_size(dtype));
    for (std::size_t k = 0; k < n; ++k) {
        const double a = dtype == DType::Float64 ? reinterpret_cast<const double*>(buf.data())[k]
                                                 : reinterpret_cast<const float*>(buf.data())[k];
        hi = std::max(hi, a);
        lo = std::min(lo, a);
    }
    return {hi, lo};
}

void check_options(const DDCAdamOptions& o) {
    DEADSPEC_CHECK_ARG(o.lr >= 0.0 && std::isfinite(o.lr), kFn,
                       ": lr must be finite and >= 0, got ", o.lr);
    DEADSPEC_CHECK_ARG(o.beta1 >= 0.0 && o.beta1 < 1.0 && o.beta2 >= 0.0 && o.beta2 < 1.0, kFn,
                       ": betas must be in [0, 1), got (", o.beta1, ", ", o.beta2, ")");
    DEADSPEC_CHECK_ARG(o.eps >= 0.0, kFn, ": eps must be >= 0, got ", o.eps);
    DEADSPEC_CHECK_ARG(o.weight_decay >= 0.0 && std::isfinite(o.weight_decay), kFn,
                       ": weight_decay must be finite and >= 0, got ", o.weight_decay);
}

// The view a block is stepped as: a block outside every site with other than 1 or 2
// dimensions is flattened (σ = 1 there, so its shape does not matter to the step).
TensorView stepped(const TensorView& v, bool flat) {
    if (!flat) return v;
    TensorView f = v;
    f.shape = {v.numel()};
    f.strides = {};
    return f;
}

}  // namespace

DDCAdam::DDCAdam(std::vector<TensorView> params, std::vector<GaugeSite> sites,
                 const DDCAdamOptions& options)
    : m_options(options) {
    check_options(options);
    m_params.reserve(params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
        const TensorView& p = params[i];
        const std::string arg = "params[" + std::to_string(i) + "]";
        detail::check_cpu_float(p, kFn, arg.c_str());
        detail::check_same_layout(p, p, arg.c_str(), true, kFn);
        DEADSPEC_CHECK_ARG(p.ndim() >= 1, kFn, ": ", arg, " must have at least 1 dimension, got ",
                           p.shape_string());
        for (std::size_t j = 0; j < i; ++j)
            DEADSPEC_CHECK_ARG(p.data != params[j].data || p.numel() == 0, kFn, ": ", arg,
                               " must be distinct from the other params, got the data of params[",
                               j, "]");
        Block b;
        b.param = p;
        const auto bytes = static_cast<std::size_t>(p.numel() * dtype_size(p.dtype));
        b.exp_avg.assign(bytes, std::byte{0});
        b.exp_avg_sq.assign(bytes, std::byte{0});
        m_params.push_back(std::move(b));
    }
    for (std::size_t s = 0; s < sites.size(); ++s) add_site(sites[s], s);
    for (Site& s : m_sites) {
        const TensorView& w = m_params[s.weight].param;
        if (w.ndim() != 2) continue;  // a norm's γ has no columns
        for (std::size_t t = 0; t < m_sites.size(); ++t) {
            const auto& c = m_sites[t].consumers;
            if (std::find(c.begin(), c.end(), s.weight) != c.end())
                s.in_site = static_cast<std::ptrdiff_t>(t);
        }
    }
    order_sites();
}

std::size_t DDCAdam::param_index(const TensorView& t, const std::string& site,
                                 const char* what) const {
    for (std::size_t i = 0; i < m_params.size(); ++i) {
        const TensorView& p = m_params[i].param;
        if (p.data == t.data && p.shape == t.shape && p.dtype == t.dtype) return i;
    }
    throw std::invalid_argument(detail::concat(
        kFn, ": ", site, "'s ", what, " must be one of the params (same data pointer, shape and ",
        "dtype), got a ", dtype_name(t.dtype), " tensor of shape ", t.shape_string(),
        " that is not"));
}

void DDCAdam::add_site(const GaugeSite& g, std::size_t index) {
    Site s;
    s.name = g.name.empty() ? "site " + std::to_string(index) : g.name;
    const std::string& n = s.name;
    DEADSPEC_CHECK_ARG(g.weight.data != nullptr, kFn, ": ", n, " must have a producer weight");
    s.weight = param_index(g.weight, n, "weight");
    const TensorView& w = m_params[s.weight].param;
    DEADSPEC_CHECK_ARG(w.ndim() == 1 || w.ndim() == 2, kFn, ": ", n,
                       "'s weight must be 1-D (a norm's γ) or 2-D (h×d), got shape ",
                       w.shape_string());
    s.size = w.shape[0];
    if (g.bias.data != nullptr) {
        s.bias = static_cast<std::ptrdiff_t>(param_index(g.bias, n, "bias"));
        const TensorView& b = g.bias;
        DEADSPEC_CHECK_ARG(b.ndim() == 1 && b.shape[0] == s.size, kFn, ": ", n,
                           "'s bias must have shape (", s.size, ",), got ", b.shape_string());
    }
    for (const TensorView& c : g.consumers) {
        const std::size_t ci = param_index(c, n, "consumer");
        DEADSPEC_CHECK_ARG(c.ndim() == 2 && c.shape[1] == s.size, kFn, ": ", n,
                           "'s consumers must be 2-D with ", s.size,
                           " columns (one per unit), got shape ", c.shape_string());
        s.consumers.push_back(ci);
    }
    std::set<std::int64_t> seen;
    for (const std::int64_t u : g.units) {
        DEADSPEC_CHECK_ARG(u >= 0 && u < s.size && seen.insert(u).second, kFn, ": ", n,
                           "'s units must be distinct indices in [0, ", s.size, "), got ", u,
                           u >= 0 && u < s.size ? " twice" : "");
    }
    s.units = g.units;
    // Python's Plan.add_site: one site per producer tensor, one site per consumer.
    for (const Site& o : m_sites) {
        for (const std::ptrdiff_t t : {static_cast<std::ptrdiff_t>(s.weight), s.bias}) {
            if (t < 0) continue;
            const bool shared = static_cast<std::size_t>(t) == o.weight || t == o.bias;
            DEADSPEC_CHECK_ARG(!shared, kFn, ": gauges must not share a producer, got '", n,
                               "' and '", o.name, "'");
        }
        for (const std::size_t c : s.consumers)
            DEADSPEC_CHECK_ARG(
                std::find(o.consumers.begin(), o.consumers.end(), c) == o.consumers.end(), kFn,
                ": a consumer's columns must belong to one gauge, got '", n, "' and '", o.name,
                "'");
    }
    const auto idx = static_cast<std::ptrdiff_t>(m_sites.size());
    for (const std::ptrdiff_t t : {static_cast<std::ptrdiff_t>(s.weight), s.bias})
        if (t >= 0) m_params[static_cast<std::size_t>(t)].row_site = idx;
    for (const std::size_t c : s.consumers) m_params[c].col_site = idx;
    m_sites.push_back(std::move(s));
}

void DDCAdam::order_sites() {
    // Topological order over "a producer's columns are scaled by site in_site" (Plan.finish).
    std::vector<int> state(m_sites.size(), 0);
    for (std::size_t i = 0; i < m_sites.size(); ++i) {
        std::vector<std::size_t> path;
        std::ptrdiff_t at = static_cast<std::ptrdiff_t>(i);
        while (at >= 0 && state[static_cast<std::size_t>(at)] != 2) {
            const auto a = static_cast<std::size_t>(at);
            DEADSPEC_CHECK_ARG(state[a] != 1, kFn,
                               ": gauges must form an acyclic network, got a cycle through '",
                               m_sites[a].name, "'");
            state[a] = 1;
            path.push_back(a);
            at = m_sites[a].in_site;
        }
        for (auto it = path.rbegin(); it != path.rend(); ++it) {
            state[*it] = 2;
            m_order.push_back(*it);
        }
    }
}

void DDCAdam::compute_scales(const std::vector<double>& factors,
                             std::vector<std::vector<std::byte>>& rho,
                             std::vector<std::vector<std::byte>>& inv) const {
    rho.assign(m_sites.size(), {});
    inv.assign(m_sites.size(), {});
    for (const std::size_t i : m_order) {
        const Site& s = m_sites[i];
        TensorView w = m_params[s.weight].param;
        TensorView col{};
        if (w.ndim() == 1) {
            w.shape = {s.size, 1};  // γ as an h×1 block (C-contiguous: checked)
            w.strides = {};
        } else if (s.in_site >= 0) {
            const auto t = static_cast<std::size_t>(s.in_site);
            col = buffer_view(rho[t], m_params[m_sites[t].weight].param.dtype, {w.shape[1]});
        }
        const TensorView bias = s.bias >= 0 ? m_params[static_cast<std::size_t>(s.bias)].param
                                            : TensorView{};
        const double fb = s.bias >= 0 ? factors[static_cast<std::size_t>(s.bias)] : 1.0;
        const Eigen::VectorXd norms =
            ddc_row_norms(w, col, bias, factors[s.weight], fb);
        if (w.dtype == DType::Float64)
            store_scales<double>(norms, s.units, rho[i], inv[i]);
        else
            store_scales<float>(norms, s.units, rho[i], inv[i]);
    }
}

bool DDCAdam::step(const std::vector<TensorView>& grads) {
    DEADSPEC_CHECK_ARG(grads.size() == m_params.size(), kStepFn, ": grads must have one view per ",
                       "parameter (", m_params.size(), "), got ", grads.size());
    for (std::size_t i = 0; i < grads.size(); ++i) {
        if (grads[i].data == nullptr) continue;
        const std::string arg = "grads[" + std::to_string(i) + "]";
        detail::check_same_layout(m_params[i].param, grads[i], arg.c_str(), false, kStepFn);
        const bool flat = m_params[i].param.ndim() > 2;
        DEADSPEC_CHECK_ARG(!flat || grads[i].is_contiguous(), kStepFn, ": ", arg,
                           " must be C-contiguous (its parameter is stepped flat), got a "
                           "strided view");
    }
    std::vector<double> gmax(grads.size(), 0.0);
    for (std::size_t i = 0; i < grads.size(); ++i) {
        if (grads[i].data == nullptr) continue;
        gmax[i] = grad_max_abs(grads[i]);
        if (std::isfinite(gmax[i])) continue;
        if (!m_options.raise_on_nonfinite) return false;
        throw Error(detail::concat(kStepFn, ": gradients must be finite, got NaN/Inf in params[",
                                   i, "]"));
    }
    const DDCAdamOptions& o = m_options;
    const double decay = 1.0 - o.lr * o.weight_decay;
    std::vector<double> factors(m_params.size(), 1.0);
    for (std::size_t i = 0; i < grads.size(); ++i)
        if (grads[i].data != nullptr) factors[i] = decay;
    std::vector<std::vector<std::byte>> rho, inv;
    compute_scales(factors, rho, inv);

    std::vector<AdamBlock> blocks;
    std::vector<Block*> stepped_blocks;
    for (std::size_t i = 0; i < m_params.size(); ++i) {
        if (grads[i].data == nullptr) continue;
        Block& b = m_params[i];
        const bool flat = b.param.ndim() > 2;
        AdamBlock a;
        a.param = stepped(b.param, flat);
        a.grad = stepped(grads[i], flat);
        a.exp_avg = buffer_view(b.exp_avg, b.param.dtype, a.param.shape);
        a.exp_avg_sq = buffer_view(b.exp_avg_sq, b.param.dtype, a.param.shape);
        if (b.row_site >= 0) {
            const auto r = static_cast<std::size_t>(b.row_site);
            const DType dt = m_params[m_sites[r].weight].param.dtype;
            // ρ along the rows, broadcast over the columns (0-stride), as Python's expand_as.
            a.scale = a.param.ndim() == 2
                          ? buffer_view(rho[r], dt, a.param.shape, {1, 0})
                          : buffer_view(rho[r], dt, a.param.shape);
        }
        if (b.col_site >= 0) {
            const auto c = static_cast<std::size_t>(b.col_site);
            a.col_scale = buffer_view(inv[c], m_params[m_sites[c].weight].param.dtype,
                                      {a.param.shape[1]});
        }
        a.hp = AdamStep{o.lr, o.beta1, o.beta2, o.eps, b.step + 1, o.weight_decay != 0.0 ? decay
                                                                                          : 1.0};
        // σ's largest entry: max ρ of the row site times max 1/ρ of the column site
        double sigma_max = 1.0;
        if (b.row_site >= 0) {
            const auto r = static_cast<std::size_t>(b.row_site);
            sigma_max *= extremes(rho[r], m_params[m_sites[r].weight].param.dtype).first;
        }
        if (b.col_site >= 0) {
            const auto c = static_cast<std::size_t>(b.col_site);
            sigma_max *= extremes(inv[c], m_params[m_sites[c].weight].param.dtype).first;
        }
        a.keep = !screen_safe(gmax[i], sigma_max, a.hp, b.param.dtype);
        blocks.push_back(std::move(a));
        stepped_blocks.push_back(&b);
    }
    std::vector<std::int64_t> refused;
    ddc_adam_update_many(blocks, refused);
    for (Block* b : stepped_blocks) ++b->step;
    for (std::size_t k = 0; k < refused.size(); ++k) {
        if (refused[k] == 0) continue;
        const auto i = static_cast<std::size_t>(stepped_blocks[k] - m_params.data());
        if (!blocks[k].keep)  // a screened block: written, not kept (a parameter near the max)
            throw Error(detail::concat(kStepFn, ": the step must produce finite values, got ",
                                       refused[k], " non-finite element(s) written in params[", i,
                                       "]: a parameter already near its dtype's largest value, "
                                       "which the overflow screen does not cover"));
        if (!m_options.raise_on_nonfinite) return false;
        throw Error(detail::concat(kStepFn, ": the step must produce finite values, got ",
                                   refused[k], " element(s) of params[", i,
                                   "] whose new value or moments overflowed (they keep their "
                                   "pre-step values; the other elements were stepped)"));
    }
    return true;
}

std::vector<Eigen::VectorXd> DDCAdam::scales() const {
    std::vector<std::vector<std::byte>> rho, inv;
    compute_scales(std::vector<double>(m_params.size(), 1.0), rho, inv);
    std::vector<Eigen::VectorXd> out;
    for (std::size_t i = 0; i < m_sites.size(); ++i) {
        const DType dt = m_params[m_sites[i].weight].param.dtype;
        const TensorView v = buffer_view(rho[i], dt, {m_sites[i].size});
        Eigen::VectorXd r(m_sites[i].size);
        for (std::int64_t k = 0; k < m_sites[i].size; ++k) r[k] = detail::element<double>(v, k);
        out.push_back(std::move(r));
    }
    return out;
}

TensorView DDCAdam::exp_avg(std::size_t i) const {
    DEADSPEC_CHECK_ARG(i < m_params.size(), "deadspec.DDCAdam.exp_avg: index must be < ",
                       m_params.size(), ", got ", i);
    const Block& b = m_params[i];
    return buffer_view(b.exp_avg, b.param.dtype, b.param.shape);
}

TensorView DDCAdam::exp_avg_sq(std::size_t i) const {
    DEADSPEC_CHECK_ARG(i < m_params.size(), "deadspec.DDCAdam.exp_avg_sq: index must be < ",
                       m_params.size(), ", got ", i);
    const Block& b = m_params[i];
    return buffer_view(b.exp_avg_sq, b.param.dtype, b.param.shape);
}

std::int64_t DDCAdam::steps(std::size_t i) const {
    DEADSPEC_CHECK_ARG(i < m_params.size(), "deadspec.DDCAdam.steps: index must be < ",
                       m_params.size(), ", got ", i);
    return m_params[i].step;
}

void DDCAdam::set_options(const DDCAdamOptions& options) {
    check_options(options);
    m_options = options;
}

}  // namespace deadspec
