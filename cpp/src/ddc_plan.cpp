// SPDX-License-Identifier: Apache-2.0
// DDCAdamPlan: Python's DDCAdam coordinate step over all blocks, the structure bound once.
#include "deadspec/ddc_plan.hpp"

#include <algorithm>
#include <atomic>
#include <thread>
#include <cmath>
#include <cstring>
#include <limits>
#include <set>
#include <stdexcept>
#include <type_traits>
#include <utility>

#include "deadspec/errors.hpp"
#include "detail/core.hpp"
#include "detail/ddc_checks.hpp"
#include "detail/ddc_kernels.hpp"
#include "detail/workers.hpp"

namespace deadspec {

namespace {

using detail::absmax_loop;
using detail::Bits;

using detail::buffer_view;

// Passes over fewer elements than this in all run on the calling thread. Below the element-wise
// kernels' kParallelElements: a plan's pass is one parallel region for all blocks (not one per
// block), so two threads pay off from a few hundred thousand elements.
constexpr std::int64_t kPlanParallel = std::int64_t(1) << 18;
// Work items of the gradient pass, in elements.
constexpr std::int64_t kCheckChunk = std::int64_t(1) << 15;

template <typename T>
Bits<T> absmax_base(const T* p, std::int64_t n) {
    return absmax_loop<T>(p, n);
}

#ifdef DEADSPEC_DDC_AVX2
template <typename T>
__attribute__((target("avx2"))) Bits<T> absmax_avx2(const T* p, std::int64_t n) {
    return absmax_loop<T>(p, n);
}
template <typename T>
DEADSPEC_DDC_AVX512 Bits<T> absmax_avx512(const T* p, std::int64_t n) {
    return absmax_loop<T>(p, n);
}
#endif

template <typename T>
Bits<T> absmax_bits(const T* p, std::int64_t n) {
#ifdef DEADSPEC_DDC_AVX2
    if (detail::has_avx512()) return absmax_avx512<T>(p, n);
    if (detail::has_avx2()) return absmax_avx2<T>(p, n);
#endif
    return absmax_base<T>(p, n);
}

// max |g| over elements [a, b) of a gradient (flat indices of its shape), NaN when one is not
// finite.
template <typename T>
double absmax(const TensorView& g, std::int64_t a, std::int64_t b) {
    using U = Bits<T>;
    const T* p = static_cast<const T*>(g.data);
    U top = 0;
    if (g.is_contiguous()) {
        top = absmax_bits<T>(p + a, b - a);
    } else {  // 1-D or 2-D, any strides: element by element
        const std::int64_t cols = g.ndim() == 2 ? g.shape[1] : g.shape[0];
        const std::int64_t s0 = g.ndim() == 2 ? g.stride(0) : 0;
        const std::int64_t s1 = g.ndim() == 2 ? g.stride(1) : g.stride(0);
        for (std::int64_t k = a; k < b; ++k) {
            const T v = p[(k / cols) * s0 + (k % cols) * s1];
            top = std::max(top, absmax_loop<T>(&v, 1));
        }
    }
    const U inf_bits = [] {
        const T inf = std::numeric_limits<T>::infinity();
        U u;
        std::memcpy(&u, &inf, sizeof(T));
        return u;
    }();
    if (top >= inf_bits) return std::numeric_limits<double>::quiet_NaN();
    T v;
    std::memcpy(&v, &top, sizeof(T));
    return static_cast<double>(v);
}

// ρ of rows [r0, r1) from their norms, as Python's site_rho: rounded to the weight's dtype, 1 at
// or below its smallest normal, where it is not finite or its reciprocal's reciprocal is not
// (a unit too large for its scale to be represented), and outside the gauge's units; 1/ρ
// divided in that dtype.
template <typename T>
void store_rows(const double* norms, const char* gauged, std::int64_t r0, std::int64_t r1,
                std::byte* rho, std::byte* inv) {
    T* r = reinterpret_cast<T*>(rho);
    T* q = reinterpret_cast<T*>(inv);
    for (std::int64_t i = r0; i < r1; ++i) {
        const T v = static_cast<T>(norms[i - r0]);
        const bool ok = v > std::numeric_limits<T>::min() && std::isfinite(v) &&
                        std::isfinite(T(1) / (T(1) / v));
        r[i] = gauged[i] && ok ? v : T(1);
        q[i] = T(1) / r[i];
    }
}

// Python's screen_safe (optim/_functional.py) with gmax = max |g|, a bound on every |g|.
bool screen_safe(double gmax, double sigma_max, const AdamStep& hp, DType dtype) {
    const double big = dtype == DType::Float64 ? std::numeric_limits<double>::max()
                                               : std::numeric_limits<float>::max();
    if (!(hp.eps > 0.0 && std::abs(hp.decay) <= 1.0 && std::isfinite(gmax * sigma_max)))
        return false;
    if (!(gmax * sigma_max <= std::sqrt(big) / 16)) return false;
    const double b1 = hp.beta1, b2 = hp.beta2;
    double bound = std::numeric_limits<double>::infinity();  // adam_ratio_bound
    if (0.0 <= b1 && b1 < std::sqrt(b2) && b2 < 1.0)
        bound = (1 - b1) / (std::sqrt(1 - b2) * (1 - b1 / std::sqrt(b2)) * (1 - b1));
    return hp.lr * bound * sigma_max <= big / 16;
}

// The bytes [first, last) a view spans (any non-negative strides; empty for no data).
std::pair<const std::byte*, const std::byte*> extent(const TensorView& v) {
    if (v.data == nullptr || v.numel() == 0) return {nullptr, nullptr};
    std::int64_t last = 0;
    for (int d = 0; d < v.ndim(); ++d) last += (v.shape[static_cast<std::size_t>(d)] - 1) * std::abs(v.stride(d));
    const auto* p = static_cast<const std::byte*>(v.data);
    return {p, p + (last + 1) * dtype_size(v.dtype)};
}

bool overlap(const TensorView& a, const TensorView& b) {
    const auto [a0, a1] = extent(a);
    const auto [b0, b1] = extent(b);
    return a0 != nullptr && b0 != nullptr && a0 < b1 && b0 < a1;
}

void check_group(const PlanGroup& g, std::size_t i, const char* fn) {
    DEADSPEC_CHECK_ARG(g.lr >= 0.0 && std::isfinite(g.lr), fn, ": groups[", i,
                       "].lr must be finite and >= 0, got ", g.lr);
    DEADSPEC_CHECK_ARG(g.beta1 >= 0.0 && g.beta1 < 1.0 && g.beta2 >= 0.0 && g.beta2 < 1.0, fn,
                       ": groups[", i, "] betas must be in [0, 1), got (", g.beta1, ", ",
                       g.beta2, ")");
    DEADSPEC_CHECK_ARG(g.eps >= 0.0, fn, ": groups[", i, "].eps must be >= 0, got ", g.eps);
    DEADSPEC_CHECK_ARG(std::isfinite(g.weight_decay), fn, ": groups[", i,
                       "].weight_decay must be finite, got ", g.weight_decay);
}

}  // namespace

DDCAdamPlan::DDCAdamPlan(std::vector<PlanBlock> blocks, std::vector<PlanSite> sites,
                         std::vector<std::size_t> order, const char* fn)
    : m_fn(fn), m_blocks(std::move(blocks)), m_sites(std::move(sites)), m_order(std::move(order)) {
    const auto n_sites = static_cast<std::ptrdiff_t>(m_sites.size());
    // the sites: producers, units, a topological order
    DEADSPEC_CHECK_ARG(m_order.size() == m_sites.size(), fn, ": order must list the ",
                       m_sites.size(), " sites, got ", m_order.size(), " entries");
    std::vector<char> done(m_sites.size(), 0);
    m_scales.resize(m_sites.size());
    for (const std::size_t i : m_order) {
        DEADSPEC_CHECK_ARG(i < m_sites.size() && !done[i], fn,
                           ": order must be a permutation of the sites, got ", i);
        const PlanSite& s = m_sites[i];
        const std::string where = "site " + std::to_string(i);
        detail::check_cpu_float(s.weight, fn, (where + " weight").c_str());
        DEADSPEC_CHECK_ARG(s.weight.ndim() == 1 || s.weight.ndim() == 2, fn, ": ", where,
                           " weight must be 1-D or 2-D, got shape ", s.weight.shape_string());
        const std::int64_t h = s.weight.shape[0];
        if (s.bias.data) detail::check_vector(s.bias, h, fn, (where + " bias").c_str());
        Scales& sc = m_scales[i];
        if (s.in_site >= 0) {
            DEADSPEC_CHECK_ARG(s.in_site < n_sites && done[static_cast<std::size_t>(s.in_site)] &&
                                   s.weight.ndim() == 2,
                               fn, ": ", where, " in_site must be a site earlier in order, of a "
                               "2-D weight, got ", s.in_site);
            const PlanSite& in = m_sites[static_cast<std::size_t>(s.in_site)];
            DEADSPEC_CHECK_ARG(in.weight.shape[0] == s.weight.shape[1], fn, ": ", where,
                               " weight must have one column per unit of its in_site (",
                               in.weight.shape[0], "), got shape ", s.weight.shape_string());
            sc.level = m_scales[static_cast<std::size_t>(s.in_site)].level + 1;
        }
        sc.gauged.assign(static_cast<std::size_t>(h), s.units.empty() ? 1 : 0);
        for (const std::int64_t u : s.units) {
            DEADSPEC_CHECK_ARG(u >= 0 && u < h && !sc.gauged[static_cast<std::size_t>(u)], fn, ": ",
                               where, " units must be distinct indices in [0, ", h, "), got ", u);
            sc.gauged[static_cast<std::size_t>(u)] = 1;
        }
        const auto bytes = static_cast<std::size_t>(h * dtype_size(s.weight.dtype));
        sc.rho.assign(bytes, std::byte{0});
        sc.inv.assign(bytes, std::byte{0});
        sc.w = s.weight;
        if (sc.w.ndim() == 1) {  // γ as an h×1 block
            sc.w.shape = {h, 1};
            sc.w.strides = {s.weight.stride(0), 1};
        }
        const std::int64_t d = sc.w.shape[1];
        sc.c.assign(static_cast<std::size_t>(d), 1.0);
        sc.b.assign(s.bias.data ? static_cast<std::size_t>(h) : 0, 0.0);
        sc.norms.assign(static_cast<std::size_t>(h), 0.0);
        const auto level = static_cast<std::size_t>(sc.level);
        if (m_levels.size() <= level) {
            m_levels.resize(level + 1);
            m_level_size.resize(level + 1, 0);
        }
        const std::int64_t per = std::max<std::int64_t>(1, kCheckChunk / std::max<std::int64_t>(d, 1));
        for (std::int64_t r = 0; r < h; r += per) m_levels[level].push_back({i, r, std::min(h, r + per)});
        m_level_size[level] += h * d;
        for (const std::ptrdiff_t b : {s.weight_block, s.bias_block})
            DEADSPEC_CHECK_ARG(b < static_cast<std::ptrdiff_t>(m_blocks.size()), fn, ": ", where,
                               " names block ", b, " of ", m_blocks.size());
        done[i] = 1;
    }
    // the blocks: a fused AdamBlock each, σ as views on the scale buffers
    m_adam.resize(m_blocks.size());
    for (std::size_t k = 0; k < m_blocks.size(); ++k) bind_block(k);
    for (std::size_t i = 0; i < m_sites.size(); ++i) bind_fused(i);
    m_grads.assign(m_blocks.size(), TensorView{});
    m_gmax.assign(m_blocks.size(), 0.0);
    const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    m_workers = std::make_unique<detail::Workers>(std::max(1, std::min(hw, num_threads())) - 1);
}

DDCAdamPlan::~DDCAdamPlan() = default;

void DDCAdamPlan::bind_block(std::size_t k) {
    const char* fn = m_fn;
    const auto n_sites = static_cast<std::ptrdiff_t>(m_sites.size());
    const PlanBlock& b = m_blocks[k];
    AdamBlock& a = m_adam[k];
    a.param = b.param;
    a.grad = b.param;  // (a placeholder until check())
    a.exp_avg = b.exp_avg;
    a.exp_avg_sq = b.exp_avg_sq;
    a.rot_axis = b.rot_axis;
    a.rot_segments = b.rot_segments;
    const std::string where = "block " + std::to_string(k);
    DEADSPEC_CHECK_ARG(b.row_site < n_sites && b.col_site < n_sites, fn, ": ", where,
                       " names a site beyond the ", n_sites, " sites");
    const bool two_d = b.param.ndim() == 2;
    auto rows_view = [&](const std::vector<std::byte>& buf, DType dt) {
        return two_d ? buffer_view(buf, dt, b.param.shape, {1, 0})
                     : buffer_view(buf, dt, b.param.shape);
    };
    if (b.row_site >= 0) {
        const auto r = static_cast<std::size_t>(b.row_site);
        DEADSPEC_CHECK_ARG(b.param.ndim() >= 1 && b.param.shape[0] == m_sites[r].weight.shape[0],
                           fn, ": ", where, " must have one row per unit of its row site");
        a.scale = rows_view(m_scales[r].rho, m_sites[r].weight.dtype);
    }
    if (b.col_site >= 0) {
        const auto c = static_cast<std::size_t>(b.col_site);
        const DType dt = m_sites[c].weight.dtype;
        const std::int64_t units = m_sites[c].weight.shape[0];
        DEADSPEC_CHECK_ARG(two_d && (b.col_axis == 0 || b.col_axis == 1) &&
                               b.param.shape[static_cast<std::size_t>(b.col_axis)] == units &&
                               (b.col_axis == 1 || b.row_site < 0),
                           fn, ": ", where, " must be 2-D with one column (col_axis 1) or row "
                           "(col_axis 0, no row site) per unit of its column site, got shape ",
                           b.param.shape_string());
        if (b.col_axis == 1)
            a.col_scale = buffer_view(m_scales[c].inv, dt, {units});
        else
            a.scale = rows_view(m_scales[c].inv, dt);
    }
    detail::check_adam_block(a, fn);
    const TensorView& st = b.step;
    DEADSPEC_CHECK_ARG(st.data != nullptr && st.dtype == DType::Float32 && st.numel() == 1 &&
                           !st.read_only && st.device.type == DeviceType::Cpu,
                       fn, ": ", where, " step must be a writable float32 CPU scalar, got ",
                       dtype_name(st.dtype), " of shape ", st.shape_string());
}

// Site i's weight block is stepped in the ρ pass, row range by row range right after its ρ
// (its rows then come from cache, not memory), when nothing else in the pass reads it: a 2-D
// block without rotations that is the site's weight, whose rows are the site's units, whose
// columns (if scaled) are a site of an earlier level, with its decay folded, and whose memory
// no other site's weight or bias shares.
void DDCAdamPlan::bind_fused(std::size_t i) {
    const PlanSite& s = m_sites[i];
    Scales& sc = m_scales[i];
    sc.fused = -1;
    if (s.weight_block < 0) return;
    const PlanBlock& b = m_blocks[static_cast<std::size_t>(s.weight_block)];
    if (b.param.ndim() != 2 || s.weight.ndim() != 2 || b.param.data != s.weight.data ||
        b.param.dtype != s.weight.dtype || b.param.shape != s.weight.shape ||
        b.param.stride(0) != s.weight.stride(0) || b.param.stride(1) != s.weight.stride(1))
        return;
    if (b.rot_axis >= 0 || !b.fold_decay || b.row_site != static_cast<std::ptrdiff_t>(i)) return;
    if (b.col_site >= 0 &&
        (b.col_axis != 1 || m_scales[static_cast<std::size_t>(b.col_site)].level >= sc.level))
        return;
    for (std::size_t j = 0; j < m_sites.size(); ++j) {
        if (j == i) continue;
        if (overlap(b.param, m_sites[j].weight) || overlap(b.param, m_sites[j].bias)) return;
    }
    if (overlap(b.param, s.bias)) return;
    sc.fused = s.weight_block;
}

std::ptrdiff_t DDCAdamPlan::check(const std::vector<TensorView>& grads) {
    m_checked = false;
    DEADSPEC_CHECK_ARG(grads.size() == m_blocks.size(), m_fn, ": grads must have one entry per "
                       "block (", m_blocks.size(), "), got ", grads.size());
    struct Item {
        std::size_t block;
        std::int64_t a, b;
    };
    std::vector<Item> items;
    std::int64_t total = 0;
    for (std::size_t k = 0; k < grads.size(); ++k) {
        m_gmax[k] = 0.0;
        if (grads[k].data == nullptr) continue;
        const std::string arg = "grads[" + std::to_string(k) + "]";
        detail::check_same_layout(m_blocks[k].param, grads[k], arg.c_str(), false, m_fn);
        const std::int64_t n = grads[k].numel();
        for (std::int64_t a = 0; a < n; a += kCheckChunk)
            items.push_back({k, a, std::min(n, a + kCheckChunk)});
        total += n;
    }
    m_grads = grads;
    const auto n_items = static_cast<std::int64_t>(items.size());
    std::vector<double> part(items.size(), 0.0);
    const int threads = detail::worker_threads(total, kPlanParallel, n_items);
    std::atomic<std::int64_t> next{0};
    m_workers->run(threads, [&](int) {
        for (std::int64_t i = next++; i < n_items; i = next++) {
            const Item& it = items[static_cast<std::size_t>(i)];
            const TensorView& g = m_grads[it.block];
            part[static_cast<std::size_t>(i)] = g.dtype == DType::Float64
                                                    ? absmax<double>(g, it.a, it.b)
                                                    : absmax<float>(g, it.a, it.b);
        }
    });
    for (std::size_t i = 0; i < items.size(); ++i) {
        double& top = m_gmax[items[i].block];
        top = std::isnan(part[i]) || std::isnan(top) ? part[i] + top : std::max(top, part[i]);
    }
    m_checked = true;
    for (std::size_t k = 0; k < m_gmax.size(); ++k)
        if (std::isnan(m_gmax[k])) return static_cast<std::ptrdiff_t>(k);
    return -1;
}

double DDCAdamPlan::factor(std::ptrdiff_t block, const std::vector<PlanGroup>& groups) const {
    // Python's _decay_factor: 1 − lr·wd for a stepped parameter with a gradient, else 1
    if (block < 0 || m_grads[static_cast<std::size_t>(block)].data == nullptr) return 1.0;
    const PlanGroup& g = groups[m_blocks[static_cast<std::size_t>(block)].group];
    return 1.0 - g.lr * g.weight_decay;
}

// Rows [r0, r1) of site `site`'s fused block, their ρ just stored: the block's step, screened
// over these rows' σ (their largest ρ, over the smallest ρ of the column site, whose level is
// done) — a bound on these rows' σ, so the screen's guarantee holds for them. `written`: the
// rows were screened (a refused element was written, as a screened block's). Returns the
// elements refused.
std::int64_t DDCAdamPlan::step_fused(std::size_t site, std::int64_t r0, std::int64_t r1,
                                     bool bounded, bool& written) const {
    const Scales& sc = m_scales[site];
    const auto k = static_cast<std::size_t>(sc.fused);
    AdamBlock a = m_adam[k];
    a.keep = true;
    if (bounded) {
        const TensorView rho = buffer_view(sc.rho, sc.w.dtype, {sc.w.shape[0]});
        double hi = 0.0;
        for (std::int64_t i = r0; i < r1; ++i) hi = std::max(hi, detail::element<double>(rho, i));
        const PlanBlock& b = m_blocks[k];
        if (b.col_site >= 0) hi *= 1.0 / m_scales[static_cast<std::size_t>(b.col_site)].lo;
        a.keep = !screen_safe(m_gmax[k], hi, a.hp, b.param.dtype);
    }
    written = !a.keep;
    return detail::adam_rows(a, r0, r1);
}

void DDCAdamPlan::compute_scales(const std::vector<PlanGroup>& groups, bool bounded,
                                 std::vector<std::int64_t>& refused, std::vector<char>& kept) {
    std::vector<std::int64_t> written(m_blocks.size(), 0);  // refused in screened row ranges
    for (std::size_t level = 0; level < m_levels.size(); ++level) {
        // this step's inputs of the level's sites (into their scratch), then their rows
        for (const std::size_t i : m_order) {
            Scales& sc = m_scales[i];
            if (static_cast<std::size_t>(sc.level) != level) continue;
            const PlanSite& s = m_sites[i];
            if (s.in_site >= 0) {
                const auto t = static_cast<std::size_t>(s.in_site);
                const TensorView in = buffer_view(m_scales[t].rho, m_sites[t].weight.dtype,
                                                  {static_cast<std::int64_t>(sc.c.size())});
                for (std::size_t k = 0; k < sc.c.size(); ++k)
                    sc.c[k] = detail::element<double>(in, static_cast<std::int64_t>(k));
            }
            for (std::size_t k = 0; k < sc.b.size(); ++k)
                sc.b[k] = detail::element<double>(
                    s.bias, static_cast<std::int64_t>(k) * s.bias.stride(0));
            sc.fw = factor(s.weight_block, groups);
            sc.fb = s.bias.data ? factor(s.bias_block, groups) : 1.0;
        }
        const std::vector<RowRange>& items = m_levels[level];
        const auto n_items = static_cast<std::int64_t>(items.size());
        const int threads = detail::worker_threads(m_level_size[level], kPlanParallel, n_items);
        std::vector<std::int64_t> part(items.size(), 0);  // refused per item (fused blocks)
        std::vector<char> screened(items.size(), 0);
        std::atomic<std::int64_t> next{0};
        m_workers->run(threads, [&](int) {
            for (std::int64_t i = next++; i < n_items; i = next++) {
                const RowRange& it = items[static_cast<std::size_t>(i)];
                Scales& sc = m_scales[it.site];
                double* out = sc.norms.data() + it.r0;
                detail::row_norms_range(sc.w, sc.c.data(), sc.b, sc.fw, sc.fb, it.r0, it.r1, out);
                if (sc.w.dtype == DType::Float64)
                    store_rows<double>(out, sc.gauged.data(), it.r0, it.r1, sc.rho.data(),
                                       sc.inv.data());
                else
                    store_rows<float>(out, sc.gauged.data(), it.r0, it.r1, sc.rho.data(),
                                      sc.inv.data());
                if (sc.fused >= 0 && m_grads[static_cast<std::size_t>(sc.fused)].data) {
                    bool w = false;
                    part[static_cast<std::size_t>(i)] =
                        step_fused(it.site, it.r0, it.r1, bounded, w);
                    screened[static_cast<std::size_t>(i)] = w ? 1 : 0;
                }
            }
        });
        for (std::size_t i = 0; i < items.size(); ++i) {
            const std::ptrdiff_t f = m_scales[items[i].site].fused;
            if (f < 0 || part[i] == 0) continue;
            (screened[i] ? written : refused)[static_cast<std::size_t>(f)] += part[i];
        }
        for (Scales& sc : m_scales) {
            if (static_cast<std::size_t>(sc.level) != level) continue;
            const TensorView v =
                buffer_view(sc.rho, sc.w.dtype, {static_cast<std::int64_t>(sc.norms.size())});
            sc.hi = 0.0;
            sc.lo = std::numeric_limits<double>::infinity();
            for (std::int64_t k = 0; k < v.shape[0]; ++k) {
                const double r = detail::element<double>(v, k);
                sc.hi = std::max(sc.hi, r);
                sc.lo = std::min(sc.lo, r);
            }
        }
    }
    for (std::size_t k = 0; k < written.size(); ++k)
        if (written[k] > 0) {  // non-finite values written: reported as a screened block's
            refused[k] = written[k];
            kept[k] = 0;
        }
}

void DDCAdamPlan::step(const std::vector<PlanGroup>& groups, bool bounded,
                       std::vector<std::int64_t>& refused, std::vector<char>& kept) {
    if (!m_checked)
        throw std::logic_error(std::string(m_fn) + ": step needs check(grads) first");
    for (std::size_t i = 0; i < groups.size(); ++i) check_group(groups[i], i, m_fn);
    for (std::size_t k = 0; k < m_blocks.size(); ++k)
        DEADSPEC_CHECK_ARG(m_blocks[k].group < groups.size(), m_fn, ": block ", k, " is in group ",
                           m_blocks[k].group, ", got ", groups.size(), " groups");
    m_checked = false;  // (one step per check)
    // every stepped block's hyper-parameters, validated before anything is written
    std::vector<std::size_t> which;
    for (std::size_t k = 0; k < m_blocks.size(); ++k) {
        if (m_grads[k].data == nullptr) continue;
        const PlanBlock& b = m_blocks[k];
        const PlanGroup& g = groups[b.group];
        AdamBlock& a = m_adam[k];
        a.grad = m_grads[k];
        const float count = *static_cast<const float*>(b.step.data);
        DEADSPEC_CHECK_ARG(std::isfinite(count) && count >= 0.0f && count < 9.0e15f, m_fn,
                           ": block ", k, " step count must be a whole number >= 0, got ", count);
        a.hp = AdamStep{g.lr, g.beta1, g.beta2, g.eps, static_cast<std::int64_t>(count) + 1,
                        b.fold_decay ? 1.0 - g.lr * g.weight_decay : 1.0};
        DEADSPEC_CHECK_ARG(a.hp.step >= 1, m_fn, ": block ", k, " step must be >= 1, got ",
                           a.hp.step);
        which.push_back(k);
    }
    refused.assign(m_blocks.size(), 0);
    kept.assign(m_blocks.size(), 1);
    compute_scales(groups, bounded, refused, kept);  // (steps the fused blocks)
    std::vector<char> fused(m_blocks.size(), 0);
    for (const Scales& sc : m_scales)
        if (sc.fused >= 0) fused[static_cast<std::size_t>(sc.fused)] = 1;
    std::vector<AdamBlock> run;
    std::vector<std::size_t> rest;
    run.reserve(which.size());
    for (const std::size_t k : which) {
        if (fused[k]) continue;
        const PlanBlock& b = m_blocks[k];
        AdamBlock& a = m_adam[k];
        a.keep = true;
        if (bounded) {
            double sigma = 1.0;  // σ's largest entry: max ρ of the row site, 1/min ρ of the column's
            if (b.row_site >= 0) sigma *= m_scales[static_cast<std::size_t>(b.row_site)].hi;
            if (b.col_site >= 0) sigma *= 1.0 / m_scales[static_cast<std::size_t>(b.col_site)].lo;
            a.keep = !screen_safe(m_gmax[k], sigma, a.hp, b.param.dtype);
        }
        kept[k] = a.keep ? 1 : 0;
        run.push_back(a);
        rest.push_back(k);
    }
    std::vector<std::int64_t> counts;
    detail::adam_update_many(run, counts, kPlanParallel, m_workers.get());
    for (std::size_t i = 0; i < rest.size(); ++i) refused[rest[i]] = counts[i];
    for (const std::size_t k : which) {
        float* count = static_cast<float*>(const_cast<void*>(m_blocks[k].step.data));
        *count += 1.0f;
    }
    m_grads.assign(m_blocks.size(), TensorView{});
}

std::vector<double> DDCAdamPlan::scale(std::size_t i) const {
    DEADSPEC_CHECK_ARG(i < m_sites.size(), m_fn, ": site index must be < ", m_sites.size(),
                       ", got ", i);
    const TensorView v = buffer_view(m_scales[i].rho, m_sites[i].weight.dtype,
                                     {m_sites[i].weight.shape[0]});
    std::vector<double> out(static_cast<std::size_t>(v.shape[0]));
    for (std::size_t k = 0; k < out.size(); ++k)
        out[k] = detail::element<double>(v, static_cast<std::int64_t>(k));
    return out;
}

}  // namespace deadspec
