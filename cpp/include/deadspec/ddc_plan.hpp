// SPDX-License-Identifier: Apache-2.0
// DDCAdamPlan: a DDCAdam coordinate step over every block in two calls, its structure bound once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "deadspec/ddc.hpp"
#include "deadspec/types.hpp"

namespace deadspec {

namespace detail {
class Workers;
}

/// Hyper-parameters of a param group (torch's AdamW names).
struct PlanGroup {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
};

/// A rescaling site of a plan: ρ = row norms of [f_w·W·diag(ρ_in) | f_b·b] in W's dtype.
struct PlanSite {
    TensorView weight;                ///< the producer's h×d weight, or a norm's γ (h,)
    TensorView bias;                  ///< h entries, or a null view
    std::ptrdiff_t in_site = -1;      ///< the site whose ρ scales W's columns (2-D W), or -1
    std::vector<std::int64_t> units;  ///< the gauge's units (empty: all); ρ = 1 elsewhere
    /// The blocks holding weight and bias (-1: stepped by no block): a block with a gradient
    /// this step contributes its decay factor 1 − lr·wd to the norms (the decayed producer's ρ).
    std::ptrdiff_t weight_block = -1, bias_block = -1;
};

/// A parameter block of a plan (see AdamBlock for the step itself).
struct PlanBlock {
    TensorView param, exp_avg, exp_avg_sq;
    TensorView step;  ///< the 0-dim float32 step count (torch's state["step"]), incremented
    std::ptrdiff_t row_site = -1;  ///< σ's rows: ρ of this site (-1: 1)
    std::ptrdiff_t col_site = -1;  ///< σ's columns: 1/ρ of this site (-1: 1)
    int col_axis = 1;              ///< 0: col_site's units index the rows (a Conv1D consumer)
    std::size_t group = 0;         ///< index into the groups of DDCAdamPlan::step
    bool fold_decay = true;        ///< decay 1 − lr·wd in the pass (false: the caller decays)
    int rot_axis = -1;             ///< head rotations, as AdamBlock
    std::vector<std::pair<std::int64_t, std::int64_t>> rot_segments;
};

/// Python's DDCAdam coordinate step (optim/adam.py), with the structure — blocks, sites, their
/// views and scratch — validated and allocated once:
/// check(grads) reads the gradients (the non-finite check and max |g| per block, one pass), and
/// step(groups) computes every site's ρ of the decayed producers in topological order, screens
/// each block for overflow, runs the fused pass over every block with a gradient and increments
/// their step counts. A site's weight block is stepped inside the ρ pass, each row range right
/// after its ρ, while the rows are in cache (screened over those rows' σ, a bound on them that
/// gives the screen's guarantee), so the producers are read from memory once a step. The arithmetic is that of site_rho, screen_safe and ddc_adam_update_many:
/// the same bits. The passes share their work out over threads kept by the plan (sleeping
/// between steps).
class DDCAdamPlan {
public:
    /// \throws std::invalid_argument for a block or site the fused step cannot take (messages
    ///         start with `fn`), a site order that is not topological.
    DDCAdamPlan(std::vector<PlanBlock> blocks, std::vector<PlanSite> sites,
                std::vector<std::size_t> order, const char* fn = "deadspec.DDCAdamPlan");
    ~DDCAdamPlan();
    DDCAdamPlan(const DDCAdamPlan&) = delete;
    DDCAdamPlan& operator=(const DDCAdamPlan&) = delete;

    std::size_t num_blocks() const { return m_blocks.size(); }
    std::size_t num_sites() const { return m_sites.size(); }

    /// Takes this step's gradients (one view per block; a null view: no gradient) and reads
    /// them once: max |g| per block. Returns the first block whose gradient is not finite, or
    /// -1. \throws std::invalid_argument for a gradient not of its block's shape and dtype.
    std::ptrdiff_t check(const std::vector<TensorView>& grads);

    /// The step of every block with a gradient from the last check(). `bounded`: the moments
    /// are the optimizer's own (the overflow screen may clear a block). `refused[k]` is set to
    /// the elements of block k whose new values were not finite (kept when `kept[k]`, else
    /// written and only counted: a screened block). \throws std::logic_error without check().
    void step(const std::vector<PlanGroup>& groups, bool bounded,
              std::vector<std::int64_t>& refused, std::vector<char>& kept);

    /// ρ of site i from the last step (of the decayed producers), as float64.
    std::vector<double> scale(std::size_t i) const;
    /// max |g| of block k from the last check() (NaN: not finite; 0 without gradient).
    double grad_max(std::size_t k) const { return m_gmax.at(k); }

private:
    struct Scales {
        std::vector<std::byte> rho, inv;  // in the producer weight's dtype
        std::vector<char> gauged;         // per unit: in the gauge's units
        double hi = 1.0, lo = 1.0;        // max ρ, min ρ
        int level = 0;
        TensorView w;                      // the weight as h×d (γ: h×1)
        std::vector<double> c, b, norms;   // column factors, bias, row norms (scratch)
        double fw = 1.0, fb = 1.0;         // this step's decay factors
        /// The block whose param is this site's weight and whose rows it scales, stepped row
        /// range by row range in the ρ pass, while its rows are in cache (-1: none).
        std::ptrdiff_t fused = -1;
    };
    struct RowRange {
        std::size_t site;
        std::int64_t r0, r1;
    };
    std::vector<std::vector<RowRange>> m_levels;  // per level, its sites' rows in work items
    std::vector<std::int64_t> m_level_size;       // elements per level
    void bind_block(std::size_t k);
    void bind_fused(std::size_t i);
    void compute_scales(const std::vector<PlanGroup>& groups, bool bounded,
                        std::vector<std::int64_t>& refused, std::vector<char>& kept);
    std::int64_t step_fused(std::size_t site, std::int64_t r0, std::int64_t r1, bool bounded,
                            bool& written) const;
    double factor(std::ptrdiff_t block, const std::vector<PlanGroup>& groups) const;

    const char* m_fn;
    std::vector<PlanBlock> m_blocks;
    std::vector<PlanSite> m_sites;
    std::vector<std::size_t> m_order;
    std::vector<Scales> m_scales;
    std::vector<TensorView> m_grads;
    std::vector<double> m_gmax;
    std::vector<AdamBlock> m_adam;  // the fused pass's blocks, σ views on m_scales
    bool m_checked = false;
    std::unique_ptr<detail::Workers> m_workers;  // the passes' threads, kept between steps
};

}  // namespace deadspec
