// SPDX-License-Identifier: Apache-2.0
// DDCSplitPlan: Python's DDCAdam(form="split") step over all blocks, the structure bound once;
// ddc_split_units. The passes are the per-block ones' (detail/split_rows.hpp): the same bits.
#include "deadspec/ddc_split_plan.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>

#include "deadspec/errors.hpp"
#include "detail/core.hpp"
#include "detail/ddc_checks.hpp"
#include "detail/split_rows.hpp"
#include "detail/workers.hpp"

namespace deadspec {

struct DDCSplitPlan::Impl {
    virtual ~Impl() = default;
    virtual std::ptrdiff_t check(const std::vector<TensorView>& grads,
                                 const std::vector<PlanGroup>& groups) = 0;
    virtual bool split(std::size_t i) const = 0;
    virtual void step(const std::vector<std::int64_t>& site_steps,
                      std::vector<std::int64_t>& refused, std::vector<std::int64_t>& site_refused) = 0;
    std::size_t n_blocks = 0, n_sites = 0;
};

namespace {

using detail::SplitItem;
using detail::SplitRef;
using detail::SplitScratch;

// Passes over fewer elements than this in all run on the calling thread (as DDCAdamPlan's).
constexpr std::int64_t kPlanParallel = std::int64_t(1) << 18;
// A wave of passes 1 and 2 (SplitPlanT::m_waves) holds sites up to this many elements (a 2^20
// float32 block's x, g, m, v and u stay in a 32 MB last-level cache from pass 1 to pass 2).
constexpr std::int64_t kWave = std::int64_t(1) << 20;
// Work items of the row-norm pass, in elements.
constexpr std::int64_t kNormChunk = std::int64_t(1) << 15;

std::string at(const char* what, std::size_t k) { return what + (" " + std::to_string(k)); }

// A written float vector of n entries of `dt`, contiguous.
void check_out_vector(const TensorView& v, std::int64_t n, DType dt, const char* fn,
                      const std::string& arg) {
    detail::check_vector(v, n, fn, arg.c_str());
    DEADSPEC_CHECK_ARG(v.dtype == dt && v.is_contiguous() && !v.read_only, fn, ": ", arg,
                       " must be a writable contiguous ", dtype_name(dt), " vector, got ",
                       dtype_name(v.dtype));
}

void check_plan_group(const PlanGroup& g, std::size_t i, const char* fn) {
    DEADSPEC_CHECK_ARG(g.lr >= 0.0 && std::isfinite(g.lr), fn, ": groups[", i,
                       "].lr must be finite and >= 0, got ", g.lr);
    DEADSPEC_CHECK_ARG(g.beta1 >= 0.0 && g.beta1 < 1.0 && g.beta2 >= 0.0 && g.beta2 < 1.0, fn,
                       ": groups[", i, "] betas must be in [0, 1), got (", g.beta1, ", ",
                       g.beta2, ")");
    DEADSPEC_CHECK_ARG(g.eps >= 0.0, fn, ": groups[", i, "].eps must be >= 0, got ", g.eps);
    const double f = 1.0 - g.lr * g.weight_decay;
    DEADSPEC_CHECK_ARG(std::isfinite(f) && std::abs(f) <= 1.0, fn, ": groups[", i,
                       "] must have lr·weight_decay in [0, 2] (the decay folded into the passes), "
                       "got ", g.lr * g.weight_decay);
}

template <typename T>
T* data_of(const TensorView& v) {
    return static_cast<T*>(const_cast<void*>(v.data));
}

template <typename T>
class SplitPlanT final : public DDCSplitPlan::Impl {
public:
    SplitPlanT(std::vector<SplitPlanBlock> blocks, std::vector<SplitPlanSite> sites,
               std::vector<std::size_t> order, const char* fn)
        : m_fn(fn), m_dtype(std::is_same_v<T, double> ? DType::Float64 : DType::Float32),
          m_order(std::move(order)) {
        n_blocks = blocks.size();
        n_sites = sites.size();
        m_blocks.resize(blocks.size());
        for (std::size_t k = 0; k < blocks.size(); ++k) bind_block(k, std::move(blocks[k]));
        m_sites.resize(sites.size());
        bind_sites(std::move(sites));
        for (std::size_t k = 0; k < m_blocks.size(); ++k) link_block(k);
        make_waves();
        const int hw = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
        m_workers = std::make_unique<detail::Workers>(std::max(1, std::min(hw, num_threads())) - 1);
        m_scratch.resize(static_cast<std::size_t>(m_workers->size()));
    }

    std::ptrdiff_t check(const std::vector<TensorView>& grads,
                         const std::vector<PlanGroup>& groups) override;
    bool split(std::size_t i) const override { return m_checked && m_sites.at(i).split; }
    void step(const std::vector<std::int64_t>& site_steps, std::vector<std::int64_t>& refused,
              std::vector<std::int64_t>& site_refused) override;

private:
    struct Block {
        SplitPlanBlock spec;
        SplitRef<T> ref;                  // passes 0 and 1 (g̃'s radial coefficients)
        SplitRef<T> app;                  // pass 2 (the update's, the radial factors)
        bool fused = false;               // passes 1 and 2 item by item (wave)
        std::vector<SplitItem> items;
        bool only = false;                // a consumer that produces for no site
        std::vector<double> ra, rb;       // per row: Σ g̃x̃, Σ x̃² (pass 0); Σ u·x̃ (pass 1)
        std::vector<double> pa, pb;       // per item × column: the partial column sums
        std::vector<double> ca, cb;       // per column: Σ g̃·P x̃, Σ (P x̃)²; Σ u·P x̃
        std::vector<T> mu, rm, cm;        // the centring, the radial factors
        std::vector<std::uint64_t> tops;  // per item: max |g| bits
        std::vector<std::int64_t> counts;  // per item: elements refused
        bool grad = false;
        bool rows = false, cols = false;  // this step: row sums / column sums wanted
    };
    struct Site {
        SplitPlanSite spec;
        std::int64_t h = 0;
        TensorView w, bias;  // the producer as h×d (γ: h×1), its bias (or null)
        std::vector<T> rho, inv, iinv;
        std::vector<char> gauged;
        int level = 0;
        std::vector<double> c, b, norms;  // column factors, bias, row norms (float64 scratch)
        double fw = 1.0, fb = 1.0;
        bool split = false;
        T *m = nullptr, *v = nullptr;
        // per unit: the sums, then detail::split_units' outputs, then the update's coefficients
        std::vector<T> q, g_in, n2, g_out, g_only, live, qs, n2m, n2s, radial, grad_row,
            grad_col, col_norm, upd_row, upd_col;
    };
    struct Work {
        std::size_t block, item;
    };
    struct RowRange {
        std::size_t site;
        std::int64_t r0, r1;
    };

    void bind_block(std::size_t k, SplitPlanBlock spec);
    void bind_sites(std::vector<SplitPlanSite> sites);
    void bind_site(std::size_t i, std::vector<char>& done);
    void link_block(std::size_t k);
    void compute_scales();
    void sums(bool deferred);
    void site_sums(Site& s);
    void coefficients(const std::vector<std::size_t>& blocks);
    void update_row(const Site& s, std::size_t i, T* out) const;
    std::int64_t fused_item(Block& b, std::size_t item, SplitScratch<T>& s);
    void make_waves();
    void wave(const std::vector<std::size_t>& blocks, const std::vector<std::size_t>& sites,
              std::vector<std::int64_t>& refused);
    template <typename F>
    void run(const std::vector<Work>& works, std::int64_t total, F&& f);
    std::vector<Work> works(bool deferred_only, std::int64_t& total) const;
    std::vector<Work> works_of(const std::vector<std::size_t>& blocks, bool deferred_only,
                               std::int64_t& total) const;
    double factor(std::ptrdiff_t block) const;

    const char* m_fn;
    DType m_dtype = DType::Float32;
    std::vector<Block> m_blocks;
    std::vector<Site> m_sites;
    std::vector<std::size_t> m_order;
    std::vector<std::vector<RowRange>> m_levels;
    std::vector<std::int64_t> m_level_size;
    std::vector<PlanGroup> m_groups;
    // Passes 1 and 2 run wave by wave: a wave's blocks (a site's producers and the consumers that
    // produce for no site, sites merged up to kWave elements; blocks of no site last) are stepped
    // while they are still in cache from its pass 1. Its sites: those whose update's radial
    // coefficients its pass 1 completes.
    std::vector<std::vector<std::size_t>> m_waves, m_wave_sites;
    bool m_checked = false;
    std::unique_ptr<detail::Workers> m_workers;
    std::vector<SplitScratch<T>> m_scratch;
};

template <typename T>
void SplitPlanT<T>::bind_block(std::size_t k, SplitPlanBlock spec) {
    const char* fn = m_fn;
    const std::string where = at("block", k);
    const TensorView& p = spec.param;
    detail::check_cpu_float(p, fn, (where + " param").c_str());
    DEADSPEC_CHECK_ARG(p.dtype == m_dtype && (p.ndim() == 1 || p.ndim() == 2) && p.numel() > 0, fn,
                       ": ", where, " param must be a non-empty 1-D or 2-D ", dtype_name(m_dtype),
                       " tensor (the plan's dtype), got ", dtype_name(p.dtype), " of shape ",
                       p.shape_string());
    detail::check_same_layout(p, p, (where + " param").c_str(), true, fn);
    detail::check_same_layout(p, spec.exp_avg, (where + " exp_avg").c_str(), true, fn);
    detail::check_same_layout(p, spec.exp_avg_sq, (where + " exp_avg_sq").c_str(), true, fn);
    const TensorView& st = spec.step;
    DEADSPEC_CHECK_ARG(st.data != nullptr && st.dtype == DType::Float32 && st.numel() == 1 &&
                           !st.read_only && st.device.type == DeviceType::Cpu,
                       fn, ": ", where, " step must be a writable float32 CPU scalar, got ",
                       dtype_name(st.dtype), " of shape ", st.shape_string());
    AdamBlock a;  // the head rotations, checked as the fused step checks them
    a.param = a.grad = p;
    a.exp_avg = spec.exp_avg;
    a.exp_avg_sq = spec.exp_avg_sq;
    a.rot_axis = spec.rot_axis;
    a.rot_segments = spec.rot_segments;
    detail::check_adam_block(a, fn);
    const bool two_d = p.ndim() == 2;
    DEADSPEC_CHECK_ARG(!spec.col_mean.data || (spec.deferred && two_d), fn, ": ", where,
                       " col_mean needs a deferred 2-D block");
    if (spec.col_mean.data)
        check_out_vector(spec.col_mean, p.shape[1], m_dtype, fn, where + " col_mean");
    Block& b = m_blocks[k];
    b.spec = std::move(spec);
    const TensorView& q = b.spec.param;
    SplitRef<T>& r = b.ref;
    r.x = data_of<T>(q);
    r.m = data_of<T>(b.spec.exp_avg);
    r.v = data_of<T>(b.spec.exp_avg_sq);
    r.two_d = two_d;
    r.rows = q.shape[0];
    r.cols = two_d ? q.shape[1] : 1;
    const auto& segs = b.spec.rot_segments;
    r.axis = segs.empty() ? -1 : (!two_d && b.spec.rot_axis >= 0 ? 0 : b.spec.rot_axis);
    r.segs = &b.spec.rot_segments;
    b.items = detail::split_items(r.rows, r.cols, r.axis, r.segs);
    b.counts.assign(b.items.size(), 0);
    b.tops.assign(b.items.size(), 0);
}

template <typename T>
void SplitPlanT<T>::bind_sites(std::vector<SplitPlanSite> sites) {
    DEADSPEC_CHECK_ARG(m_order.size() == sites.size(), m_fn, ": order must list the ",
                       sites.size(), " sites, got ", m_order.size(), " entries");
    for (std::size_t i = 0; i < sites.size(); ++i) m_sites[i].spec = std::move(sites[i]);
    std::vector<char> done(m_sites.size(), 0);
    for (const std::size_t i : m_order) {
        DEADSPEC_CHECK_ARG(i < m_sites.size() && !done[i], m_fn,
                           ": order must be a permutation of the sites, got ", i);
        bind_site(i, done);
        done[i] = 1;
    }
}

template <typename T>
void SplitPlanT<T>::bind_site(std::size_t i, std::vector<char>& done) {
    const char* fn = m_fn;
    Site& s = m_sites[i];
    const SplitPlanSite& sp = s.spec;
    const std::string where = at("site", i);
    const auto nb = static_cast<std::ptrdiff_t>(m_blocks.size());
    DEADSPEC_CHECK_ARG(sp.weight_block >= 0 && sp.weight_block < nb && sp.bias_block < nb, fn,
                       ": ", where, " must name its weight's block (and its bias's or -1) among "
                       "the ", nb, " blocks, got ", sp.weight_block, ", ", sp.bias_block);
    for (const std::ptrdiff_t k : {sp.weight_block, sp.bias_block})
        DEADSPEC_CHECK_ARG(k < 0 || m_blocks[static_cast<std::size_t>(k)].spec.row_site ==
                                        static_cast<std::ptrdiff_t>(i),
                           fn, ": ", where, " producer block ", k, " must have row_site ", i);
    const TensorView& w = m_blocks[static_cast<std::size_t>(sp.weight_block)].spec.param;
    s.h = w.shape[0];
    s.w = w;
    if (w.ndim() == 1) {  // γ as an h×1 block
        s.w.shape = {s.h, 1};
        s.w.strides = {1, 1};
    }
    if (sp.bias_block >= 0) {
        s.bias = m_blocks[static_cast<std::size_t>(sp.bias_block)].spec.param;
        DEADSPEC_CHECK_ARG(s.bias.ndim() == 1 && s.bias.shape[0] == s.h, fn, ": ", where,
                           " bias must have one entry per unit (", s.h, "), got shape ",
                           s.bias.shape_string());
    }
    if (sp.in_site >= 0) {
        const auto t = static_cast<std::size_t>(sp.in_site);
        DEADSPEC_CHECK_ARG(t < m_sites.size() && done[t] && w.ndim() == 2 &&
                               w.shape[1] == m_sites[t].h,
                           fn, ": ", where, " in_site must be a site earlier in order whose units "
                           "index the 2-D weight's columns, got ", sp.in_site);
        s.level = m_sites[t].level + 1;
    }
    for (const std::size_t c : sp.consumers)
        DEADSPEC_CHECK_ARG(c < m_blocks.size() && m_blocks[c].spec.col_site ==
                                                      static_cast<std::ptrdiff_t>(i),
                           fn, ": ", where, " consumer block ", c, " must have col_site ", i);
    const auto h = static_cast<std::size_t>(s.h);
    s.gauged.assign(h, sp.units.empty() ? 1 : 0);
    for (const std::int64_t u : sp.units) {
        DEADSPEC_CHECK_ARG(u >= 0 && u < s.h && !s.gauged[static_cast<std::size_t>(u)], fn, ": ",
                           where, " units must be distinct indices in [0, ", s.h, "), got ", u);
        s.gauged[static_cast<std::size_t>(u)] = 1;
    }
    DEADSPEC_CHECK_ARG(!sp.exp_avg.data == !sp.exp_avg_sq.data, fn, ": ", where,
                       " needs both exp_avg and exp_avg_sq, or neither");
    if (sp.exp_avg.data) {
        check_out_vector(sp.exp_avg, s.h, m_dtype, fn, where + " exp_avg");
        check_out_vector(sp.exp_avg_sq, s.h, m_dtype, fn, where + " exp_avg_sq");
        s.m = data_of<T>(sp.exp_avg);
        s.v = data_of<T>(sp.exp_avg_sq);
    }
    for (auto* v : {&s.rho, &s.inv, &s.iinv, &s.q, &s.g_in, &s.n2, &s.g_out, &s.g_only, &s.live,
                    &s.qs, &s.n2m, &s.n2s, &s.radial, &s.grad_row, &s.grad_col, &s.col_norm,
                    &s.upd_row, &s.upd_col})
        v->assign(h, T(1));
    s.c.assign(static_cast<std::size_t>(s.w.shape[1]), 1.0);
    s.b.assign(s.bias.data ? h : 0, 0.0);
    s.norms.assign(h, 0.0);
    const auto level = static_cast<std::size_t>(s.level);
    if (m_levels.size() <= level) {
        m_levels.resize(level + 1);
        m_level_size.resize(level + 1, 0);
    }
    const std::int64_t d = s.w.shape[1];
    const std::int64_t per = std::max<std::int64_t>(1, kNormChunk / std::max<std::int64_t>(d, 1));
    for (std::int64_t r = 0; r < s.h; r += per)
        m_levels[level].push_back({i, r, std::min(s.h, r + per)});
    m_level_size[level] += s.h * d;
}

// σ's factors as views on the sites' scale buffers, the roles of the block.
template <typename T>
void SplitPlanT<T>::link_block(std::size_t k) {
    Block& b = m_blocks[k];
    const SplitPlanBlock& sp = b.spec;
    const std::string where = at("block", k);
    const auto ns = static_cast<std::ptrdiff_t>(m_sites.size());
    DEADSPEC_CHECK_ARG(sp.row_site < ns && sp.col_site < ns, m_fn, ": ", where,
                       " names a site beyond the ", ns, " sites");
    SplitRef<T>& r = b.ref;
    if (sp.row_site >= 0) {
        const Site& s = m_sites[static_cast<std::size_t>(sp.row_site)];
        DEADSPEC_CHECK_ARG(r.rows == s.h && !sp.deferred && !(r.axis >= 0 && r.axis == 0), m_fn,
                           ": ", where, " must have one row per unit of its row site, not be "
                           "deferred, nor rotated along its rows");
        r.rs = s.rho.data();
    }
    if (sp.col_site >= 0) {
        const Site& s = m_sites[static_cast<std::size_t>(sp.col_site)];
        DEADSPEC_CHECK_ARG(r.two_d && r.cols == s.h && r.axis != 1, m_fn, ": ", where,
                           " must be 2-D with one column per unit of its column site, not "
                           "rotated along its columns, got shape ", sp.param.shape_string());
        r.cs = s.inv.data();
        r.ics = s.iinv.data();
    }
    b.only = sp.col_site >= 0 && sp.row_site < 0;
    const auto rows = static_cast<std::size_t>(r.rows), cols = static_cast<std::size_t>(r.cols);
    if (sp.row_site >= 0) b.ra.assign(rows, 0.0), b.rb.assign(rows, 0.0);
    if (sp.col_site >= 0) {
        b.pa.assign(b.items.size() * cols, 0.0);
        b.pb.assign(b.items.size() * cols, 0.0);
        b.ca.assign(cols, 0.0);
        b.cb.assign(cols, 0.0);
    }
    if (sp.col_mean.data) b.mu.assign(cols, T(0));
    b.rm.assign(sp.row_site >= 0 ? rows : 0, T(1));
    b.cm.assign(sp.col_site >= 0 ? cols : 0, T(1));
}

template <typename T>
double SplitPlanT<T>::factor(std::ptrdiff_t block) const {
    // Python's _decay_factor: 1 − lr·wd for a parameter with a gradient, else 1
    if (block < 0 || !m_blocks[static_cast<std::size_t>(block)].grad) return 1.0;
    const PlanGroup& g = m_groups[m_blocks[static_cast<std::size_t>(block)].spec.group];
    return 1.0 - g.lr * g.weight_decay;
}

template <typename T>
template <typename F>
void SplitPlanT<T>::run(const std::vector<Work>& works, std::int64_t total, F&& f) {
    const auto n = static_cast<std::int64_t>(works.size());
    const int threads = detail::worker_threads(total, kPlanParallel, n);
    std::atomic<std::int64_t> next{0};
    m_workers->run(threads, [&](int id) {
        SplitScratch<T>& s = m_scratch[static_cast<std::size_t>(id)];
        for (std::int64_t i = next++; i < n; i = next++) f(works[static_cast<std::size_t>(i)], s);
    });
}

template <typename T>
std::vector<typename SplitPlanT<T>::Work> SplitPlanT<T>::works(bool deferred_only,
                                                               std::int64_t& total) const {
    std::vector<std::size_t> all(m_blocks.size());
    for (std::size_t k = 0; k < all.size(); ++k) all[k] = k;
    return works_of(all, deferred_only, total);
}

template <typename T>
std::vector<typename SplitPlanT<T>::Work> SplitPlanT<T>::works_of(
    const std::vector<std::size_t>& blocks, bool deferred_only, std::int64_t& total) const {
    std::vector<Work> out;
    total = 0;
    for (const std::size_t k : blocks) {
        const Block& b = m_blocks[k];
        if (!b.grad || (deferred_only && !b.spec.deferred)) continue;
        for (std::size_t i = 0; i < b.items.size(); ++i) out.push_back({k, i});
        total += b.ref.rows * b.ref.cols;
    }
    return out;
}


// ρ of rows [r0, r1) from their norms, as Python's site_rho (and DDCAdamPlan): rounded to the
// dtype, 1 at or below its smallest normal, where it is not finite or its reciprocal's
// reciprocal is not, and outside the gauge's units; 1/ρ and 1/(1/ρ) divided in the dtype.
template <typename T>
void store_rows(const double* norms, const char* gauged, std::int64_t r0, std::int64_t r1, T* rho,
                T* inv, T* iinv) {
    for (std::int64_t i = r0; i < r1; ++i) {
        const T v = static_cast<T>(norms[i - r0]);
        const bool ok = v > std::numeric_limits<T>::min() && std::isfinite(v) &&
                        std::isfinite(T(1) / (T(1) / v));
        rho[i] = gauged[i] && ok ? v : T(1);
        inv[i] = T(1) / rho[i];
        iinv[i] = T(1) / inv[i];
    }
}

template <typename T>
void SplitPlanT<T>::compute_scales() {
    for (std::size_t level = 0; level < m_levels.size(); ++level) {
        for (Site& s : m_sites) {
            if (static_cast<std::size_t>(s.level) != level) continue;
            if (s.spec.in_site >= 0) {
                const Site& in = m_sites[static_cast<std::size_t>(s.spec.in_site)];
                for (std::size_t k = 0; k < s.c.size(); ++k) s.c[k] = static_cast<double>(in.rho[k]);
            }
            const T* bias = static_cast<const T*>(s.bias.data);
            for (std::size_t k = 0; k < s.b.size(); ++k) s.b[k] = static_cast<double>(bias[k]);
            s.fw = factor(s.spec.weight_block);
            s.fb = s.bias.data ? factor(s.spec.bias_block) : 1.0;
        }
        const std::vector<RowRange>& items = m_levels[level];
        const auto n = static_cast<std::int64_t>(items.size());
        const int threads = detail::worker_threads(m_level_size[level], kPlanParallel, n);
        std::atomic<std::int64_t> next{0};
        m_workers->run(threads, [&](int) {
            for (std::int64_t i = next++; i < n; i = next++) {
                const RowRange& it = items[static_cast<std::size_t>(i)];
                Site& s = m_sites[it.site];
                double* out = s.norms.data() + it.r0;
                detail::row_norms_range(s.w, s.c.data(), s.b, s.fw, s.fb, it.r0, it.r1, out);
                store_rows<T>(out, s.gauged.data(), it.r0, it.r1, s.rho.data(), s.inv.data(),
                              s.iinv.data());
            }
        });
    }
}

// Pass 0 over the blocks with a gradient (`deferred`: only the deferred ones, with their sums;
// else the others with theirs and every gradient's check), the column sums summed.
template <typename T>
void SplitPlanT<T>::sums(bool deferred) {
    std::int64_t total = 0;
    const std::vector<Work> ws = works(deferred, total);
    run(ws, total, [&](const Work& w, SplitScratch<T>& s) {
        Block& b = m_blocks[w.block];
        const auto off = w.item * static_cast<std::size_t>(b.ref.cols);
        const bool mine = b.spec.deferred == deferred;  // (its sums are taken in this call)
        const bool cols = mine && b.cols, sq = cols && b.only;  // (Σ (P x̃)²: n2's, split columns)
        if (cols) std::fill(b.pa.begin() + off, b.pa.begin() + off + b.ref.cols, 0.0);
        if (sq) std::fill(b.pb.begin() + off, b.pb.begin() + off + b.ref.cols, 0.0);
        b.tops[w.item] = 0;
        detail::split_sums_rows(b.ref, b.items[w.item], s, mine && b.rows ? b.ra.data() : nullptr,
                                mine && b.rows ? b.rb.data() : nullptr,
                                cols ? b.pa.data() + off : nullptr,
                                sq ? b.pb.data() + off : nullptr,
                                deferred ? nullptr : &b.tops[w.item]);
    });
    for (Block& b : m_blocks) {
        if (!b.grad || b.spec.deferred != deferred || !b.cols) continue;
        detail::split_sum_parts(b.pa, b.items.size(), b.ref.cols, b.ca.data());
        if (b.only) detail::split_sum_parts(b.pb, b.items.size(), b.ref.cols, b.cb.data());
        detail::split_rescue_columns(b.ref, m_scratch[0], false, b.ca.data(),
                                     b.only ? b.cb.data() : nullptr);
    }
}

template <typename T>
std::ptrdiff_t SplitPlanT<T>::check(const std::vector<TensorView>& grads,
                                    const std::vector<PlanGroup>& groups) {
    m_checked = false;
    DEADSPEC_CHECK_ARG(grads.size() == m_blocks.size(), m_fn, ": grads must have one entry per "
                       "block (", m_blocks.size(), "), got ", grads.size());
    for (std::size_t i = 0; i < groups.size(); ++i) check_plan_group(groups[i], i, m_fn);
    for (std::size_t k = 0; k < m_blocks.size(); ++k) {
        Block& b = m_blocks[k];
        DEADSPEC_CHECK_ARG(b.spec.group < groups.size(), m_fn, ": block ", k, " is in group ",
                           b.spec.group, ", got ", groups.size(), " groups");
        b.grad = grads[k].data != nullptr;
        if (!b.grad) continue;
        const std::string arg = "grads[" + std::to_string(k) + "]";
        detail::check_same_layout(b.spec.param, grads[k], arg.c_str(), false, m_fn);
        b.ref.g = static_cast<const T*>(grads[k].data);
        b.ref.gs0 = grads[k].stride(0);
        b.ref.gs1 = b.ref.two_d ? grads[k].stride(1) : 1;
    }
    for (const Site& s : m_sites)
        DEADSPEC_CHECK_ARG(s.spec.group < groups.size(), m_fn, ": a site is in group ",
                           s.spec.group, ", got ", groups.size(), " groups");
    m_groups = groups;
    for (Block& b : m_blocks) {
        const PlanGroup& g = m_groups[b.spec.group];
        b.ref.decay = b.grad && !b.spec.deferred ? static_cast<T>(1.0 - g.lr * g.weight_decay)
                                                 : T(1);
    }
    for (Site& s : m_sites) {
        s.split = m_blocks[static_cast<std::size_t>(s.spec.weight_block)].grad &&
                  (s.spec.bias_block < 0 || m_blocks[static_cast<std::size_t>(s.spec.bias_block)].grad);
        for (const std::size_t c : s.spec.consumers) s.split = s.split && m_blocks[c].grad;
    }
    for (Block& b : m_blocks) {
        b.rows = b.spec.row_site >= 0 && m_sites[static_cast<std::size_t>(b.spec.row_site)].split;
        b.cols = b.spec.col_site >= 0 && m_sites[static_cast<std::size_t>(b.spec.col_site)].split;
    }
    compute_scales();
    sums(false);
    const T inf = std::numeric_limits<T>::infinity();
    std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t> inf_bits;
    std::memcpy(&inf_bits, &inf, sizeof(T));
    m_checked = true;
    for (std::size_t k = 0; k < m_blocks.size(); ++k)
        for (const std::uint64_t top : m_blocks[k].tops)
            if (m_blocks[k].grad && top >= inf_bits) return static_cast<std::ptrdiff_t>(k);
    return -1;
}

// A site's per-unit sums in the dtype, in Python's order (the producer's weight then bias; the
// consumers in order), from the float64 sums rounded to the dtype.
template <typename T>
void SplitPlanT<T>::site_sums(Site& s) {
    const auto h = static_cast<std::size_t>(s.h);
    std::fill(s.q.begin(), s.q.end(), T(0));
    std::fill(s.g_in.begin(), s.g_in.end(), T(0));
    std::fill(s.n2.begin(), s.n2.end(), T(0));
    std::fill(s.g_out.begin(), s.g_out.end(), T(0));
    std::fill(s.g_only.begin(), s.g_only.end(), T(0));
    for (const std::ptrdiff_t k : {s.spec.weight_block, s.spec.bias_block}) {
        if (k < 0) continue;
        const Block& b = m_blocks[static_cast<std::size_t>(k)];
        for (std::size_t i = 0; i < h; ++i) {
            s.q[i] = s.q[i] + static_cast<T>(b.rb[i]);
            s.g_in[i] = s.g_in[i] + static_cast<T>(b.ra[i]);
        }
    }
    for (const std::size_t k : s.spec.consumers) {
        const Block& b = m_blocks[k];
        for (std::size_t j = 0; j < h; ++j) {
            s.g_out[j] = s.g_out[j] + static_cast<T>(b.ca[j]);
            if (!b.only) continue;
            s.n2[j] = s.n2[j] + static_cast<T>(b.cb[j]);
            s.g_only[j] = s.g_only[j] + static_cast<T>(b.ca[j]);
        }
    }
}

// Each block's radial coefficients from the split site it is a block of, its rows' site, else its
// columns' (SplitStep): g̃'s for passes 1 (`ref`), the update's and the radial factors for pass 2
// (`app`; the update's filled in by the wave).
template <typename T>
void SplitPlanT<T>::coefficients(const std::vector<std::size_t>& blocks) {
    for (const std::size_t k : blocks) {
        Block& b = m_blocks[k];
        if (!b.grad) continue;
        SplitRef<T>& r = b.ref;
        r.a = r.bc = r.nrm = r.rm = r.cm = nullptr;
        const T lr = static_cast<T>(m_groups[b.spec.group].lr);
        SplitRef<T>& u = b.app;
        u = r;
        if (b.spec.row_site >= 0) {
            const Site& s = m_sites[static_cast<std::size_t>(b.spec.row_site)];
            if (s.split) {
                r.a = s.grad_row.data();
                u.a = s.upd_row.data();
                for (std::size_t i = 0; i < b.rm.size(); ++i) b.rm[i] = std::exp(lr * s.radial[i]);
                u.rm = b.rm.data();
            }
        } else if (b.spec.col_site >= 0 && b.cols) {
            const Site& s = m_sites[static_cast<std::size_t>(b.spec.col_site)];
            r.bc = s.grad_col.data();
            u.bc = s.upd_col.data();
            r.nrm = u.nrm = s.col_norm.data();
        }
        if (b.cols) {
            const Site& s = m_sites[static_cast<std::size_t>(b.spec.col_site)];
            for (std::size_t j = 0; j < b.cm.size(); ++j) b.cm[j] = std::exp(lr * s.radial[j]);
            u.cm = b.cm.data();
        }
        // a split site's 2-D producer weight, heads not rotated: row-local passes 1 and 2
        b.fused = r.a != nullptr && r.two_d && r.axis < 0;
    }
}

// The update's radial coefficient of unit i of a split site, as the wave's site loop computes
// it (site_sums' order: the weight's row sum, then the bias's).
template <typename T>
void SplitPlanT<T>::update_row(const Site& s, std::size_t i, T* out) const {
    T gi = T(0);
    for (const std::ptrdiff_t k : {s.spec.weight_block, s.spec.bias_block})
        if (k >= 0) gi = gi + static_cast<T>(m_blocks[static_cast<std::size_t>(k)].ra[i]);
    out[i] = s.live[i] != T(0) ? gi / s.qs[i] : T(0);
}

// Passes 1 and 2 on one item of a fused block: the moments and the rows' Σ u·x̃, the rows'
// update coefficients (the bias's pass 1 ran before), the apply, u kept in scratch between
// them; the item's rows stay in cache. Returns the elements refused.
template <typename T>
std::int64_t SplitPlanT<T>::fused_item(Block& b, std::size_t item, SplitScratch<T>& s) {
    const SplitItem& it = b.items[item];
    const auto n = static_cast<std::size_t>((it.r1 - it.r0) * b.ref.cols);
    if (s.ku.size() < n) s.ku.resize(n);
    SplitRef<T> r = b.ref;
    r.u = s.ku.data();
    r.u0 = it.r0;
    std::int64_t refused = detail::split_moments_rows(r, it, s, b.ra.data(), nullptr);
    const Site& site = m_sites[static_cast<std::size_t>(b.spec.row_site)];
    T* upd = const_cast<T*>(b.app.a);
    for (std::int64_t i = it.r0; i < it.r1; ++i) update_row(site, static_cast<std::size_t>(i), upd);
    SplitRef<T> a = b.app;
    a.u = s.ku.data();
    a.u0 = it.r0;
    return refused + detail::split_apply_rows(a, it, s);
}

template <typename T>
void SplitPlanT<T>::step(const std::vector<std::int64_t>& site_steps,
                         std::vector<std::int64_t>& refused,
                         std::vector<std::int64_t>& site_refused) {
    if (!m_checked) throw std::logic_error(std::string(m_fn) + ": step needs check() first");
    DEADSPEC_CHECK_ARG(site_steps.size() == m_sites.size(), m_fn, ": site_steps must have one "
                       "entry per site (", m_sites.size(), "), got ", site_steps.size());
    for (std::size_t i = 0; i < m_sites.size(); ++i) {
        if (!m_sites[i].split) continue;
        if (!m_sites[i].m)
            throw std::logic_error(detail::concat(m_fn, ": site ", i, " is split this step but "
                                                  "has no radial moments"));
        DEADSPEC_CHECK_ARG(site_steps[i] >= 0, m_fn, ": site_steps[", i, "] must be >= 0, got ",
                           site_steps[i]);
    }
    for (std::size_t k = 0; k < m_blocks.size(); ++k) {
        const float count = *static_cast<const float*>(m_blocks[k].spec.step.data);
        DEADSPEC_CHECK_ARG(!m_blocks[k].grad || (std::isfinite(count) && count >= 0.0f &&
                                                 count < 9.0e15f),
                           m_fn, ": block ", k, " step count must be a whole number >= 0, got ",
                           count);
    }
    m_checked = false;  // (one step per check)
    for (Block& b : m_blocks) {  // the centring of a logit-shift consumer: its means / σ
        if (!b.grad || b.mu.empty()) continue;
        const T* mean = static_cast<const T*>(b.spec.col_mean.data);
        for (std::size_t j = 0; j < b.mu.size(); ++j)
            b.mu[j] = b.ref.cs ? mean[j] / b.ref.cs[j] : mean[j];
        b.ref.mu = b.mu.data();
    }
    sums(true);
    site_refused.assign(m_sites.size(), 0);
    for (std::size_t i = 0; i < m_sites.size(); ++i) {
        Site& s = m_sites[i];
        if (!s.split) continue;
        site_sums(s);
        const detail::SplitUnits<T> u{s.q.data(), s.g_in.data(), s.n2.data(), s.g_out.data(),
                                      s.g_only.data(), s.gauged.data(), s.m, s.v,
                                      s.live.data(), s.qs.data(), s.n2m.data(), s.n2s.data(),
                                      s.radial.data(), s.grad_row.data(), s.grad_col.data(),
                                      s.col_norm.data()};
        const PlanGroup& g = m_groups[s.spec.group];
        site_refused[i] = detail::split_units(u, s.h, site_steps[i] + 1, g.beta1, g.beta2, g.eps);
    }
    for (Block& b : m_blocks) {
        if (!b.grad) continue;
        const PlanGroup& g = m_groups[b.spec.group];
        const auto count = static_cast<std::int64_t>(*static_cast<const float*>(b.spec.step.data));
        b.ref.hp = detail::AdamScalars<T>(AdamStep{g.lr, g.beta1, g.beta2, g.eps, count + 1, 1.0});
    }
    refused.assign(m_blocks.size(), 0);
    for (std::size_t w = 0; w < m_waves.size(); ++w) wave(m_waves[w], m_wave_sites[w], refused);
    for (Block& b : m_blocks)
        if (b.grad) *static_cast<float*>(const_cast<void*>(b.spec.step.data)) += 1.0f;
}

// Passes 1 and 2 of one wave (m_waves): the moments with g̃'s radial coefficients, the update's
// radial coefficients of its sites, the apply; a fused block's (coefficients()) item by item,
// after the other blocks' pass 1 (its bias's row sums) and before their pass 2.
template <typename T>
void SplitPlanT<T>::wave(const std::vector<std::size_t>& blocks,
                         const std::vector<std::size_t>& sites,
                         std::vector<std::int64_t>& refused) {
    coefficients(blocks);
    std::vector<std::size_t> fused, rest;
    for (const std::size_t k : blocks) (m_blocks[k].fused ? fused : rest).push_back(k);
    std::int64_t total = 0, fused_total = 0;
    const std::vector<Work> ws = works_of(rest, false, total);
    run(ws, total, [&](const Work& w, SplitScratch<T>& s) {
        Block& b = m_blocks[w.block];
        const auto off = w.item * static_cast<std::size_t>(b.ref.cols);
        const bool cols = b.only && b.cols;
        if (cols) std::fill(b.pa.begin() + off, b.pa.begin() + off + b.ref.cols, 0.0);
        b.counts[w.item] = detail::split_moments_rows(b.ref, b.items[w.item], s,
                                                      b.rows ? b.ra.data() : nullptr,
                                                      cols ? b.pa.data() + off : nullptr);
    });
    for (const std::size_t k : rest) {
        Block& b = m_blocks[k];
        if (!b.grad) continue;
        for (const std::int64_t c : b.counts) refused[k] += c;
        if (!(b.only && b.cols)) continue;
        detail::split_sum_parts(b.pa, b.items.size(), b.ref.cols, b.ca.data());
        detail::split_rescue_columns(b.ref, m_scratch[0], true, b.ca.data(), nullptr);
    }
    const std::vector<Work> wf = works_of(fused, false, fused_total);
    run(wf, fused_total, [&](const Work& w, SplitScratch<T>& s) {
        m_blocks[w.block].counts[w.item] = fused_item(m_blocks[w.block], w.item, s);
    });
    for (const std::size_t i : sites) {  // the update's radial coefficients
        Site& s = m_sites[i];
        if (!s.split) continue;
        site_sums(s);  // (q, g_in: Σ u·x̃; g_only: Σ u·P x̃ of the column-split consumers)
        for (std::size_t k = 0; k < s.upd_row.size(); ++k) {
            s.upd_row[k] = s.live[k] != T(0) ? s.g_in[k] / s.qs[k] : T(0);
            s.upd_col[k] = s.n2m[k] > T(0) ? s.g_only[k] / s.n2s[k] : T(0);
        }
    }
    run(ws, total, [&](const Work& w, SplitScratch<T>& s) {
        Block& b = m_blocks[w.block];
        b.counts[w.item] = detail::split_apply_rows(b.app, b.items[w.item], s);
    });
    for (const std::size_t k : blocks)
        if (m_blocks[k].grad)
            for (const std::int64_t c : m_blocks[k].counts) refused[k] += c;
}

// The waves: each site's producers and its consumers that produce for no site (whose pass 1
// completes the site's update sums), in site order, merged until a wave holds kWave elements;
// the blocks of no site in the last.
template <typename T>
void SplitPlanT<T>::make_waves() {
    std::vector<std::vector<std::size_t>> of(m_sites.size());
    std::vector<std::size_t> free;
    for (std::size_t k = 0; k < m_blocks.size(); ++k) {
        const SplitPlanBlock& sp = m_blocks[k].spec;
        const std::ptrdiff_t site = sp.row_site >= 0 ? sp.row_site : sp.col_site;
        if (site >= 0)
            of[static_cast<std::size_t>(site)].push_back(k);
        else
            free.push_back(k);
    }
    std::int64_t size = kWave;
    for (std::size_t i = 0; i < m_sites.size(); ++i) {
        if (size >= kWave) {
            m_waves.emplace_back();
            m_wave_sites.emplace_back();
            size = 0;
        }
        for (const std::size_t k : of[i]) {
            m_waves.back().push_back(k);
            size += m_blocks[k].ref.rows * m_blocks[k].ref.cols;
        }
        m_wave_sites.back().push_back(i);
    }
    if (m_waves.empty()) {
        m_waves.emplace_back();
        m_wave_sites.emplace_back();
    }
    m_waves.back().insert(m_waves.back().end(), free.begin(), free.end());
}

}  // namespace

DDCSplitPlan::DDCSplitPlan(std::vector<SplitPlanBlock> blocks, std::vector<SplitPlanSite> sites,
                           std::vector<std::size_t> order, const char* fn) {
    const DType dt = blocks.empty() ? DType::Float32 : blocks.front().param.dtype;
    if (dt == DType::Float64)
        m_impl = std::make_unique<SplitPlanT<double>>(std::move(blocks), std::move(sites),
                                                      std::move(order), fn);
    else
        m_impl = std::make_unique<SplitPlanT<float>>(std::move(blocks), std::move(sites),
                                                     std::move(order), fn);
}

DDCSplitPlan::~DDCSplitPlan() = default;

std::size_t DDCSplitPlan::num_blocks() const { return m_impl->n_blocks; }
std::size_t DDCSplitPlan::num_sites() const { return m_impl->n_sites; }

std::ptrdiff_t DDCSplitPlan::check(const std::vector<TensorView>& grads,
                                   const std::vector<PlanGroup>& groups) {
    return m_impl->check(grads, groups);
}

bool DDCSplitPlan::split(std::size_t i) const { return m_impl->split(i); }

void DDCSplitPlan::step(const std::vector<std::int64_t>& site_steps,
                        std::vector<std::int64_t>& refused,
                        std::vector<std::int64_t>& site_refused) {
    m_impl->step(site_steps, refused, site_refused);
}

}  // namespace deadspec
