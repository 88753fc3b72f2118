// SPDX-License-Identifier: Apache-2.0
// DDCSplitPlan: DDCAdam's split form (form="split") over every block in two calls, its structure
// bound once; ddc_split_units, the per-unit step of one site.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "deadspec/ddc.hpp"
#include "deadspec/ddc_plan.hpp"
#include "deadspec/types.hpp"

namespace deadspec {

/// A parameter block of a split plan.
struct SplitPlanBlock {
    TensorView param, exp_avg, exp_avg_sq;
    TensorView step;               ///< the 0-dim float32 step count, incremented by step()
    std::ptrdiff_t row_site = -1;  ///< the site whose units are its rows (σ's rows: ρ), or -1
    std::ptrdiff_t col_site = -1;  ///< the site whose units are its columns (σ's: 1/ρ), or -1
    std::size_t group = 0;         ///< index into the groups of check()
    /// Decayed by the caller between check() and step() (a logit layer's shift-aware decay):
    /// the passes read it undecayed, and its sums are taken in step(), not check().
    bool deferred = false;
    /// A logit-shift consumer (2-D, deferred): its column means (one per column, the plan's
    /// dtype), written by the caller before step(); P x̃ is centred by them / σ's column factor.
    TensorView col_mean;
    int rot_axis = -1;  ///< head rotations, as AdamBlock
    std::vector<std::pair<std::int64_t, std::int64_t>> rot_segments;
};

/// A rescaling site of a split plan: its producer rows (as PlanSite: ρ = row norms of the decayed
/// [W·diag(ρ_in) | b]), its consumers, and the state of its radial scalar Adam.
struct SplitPlanSite {
    std::ptrdiff_t weight_block = -1;  ///< the block of the producer's weight (h×d) or γ (h,)
    std::ptrdiff_t bias_block = -1;    ///< the block of its bias or β, or -1
    std::ptrdiff_t in_site = -1;       ///< the site whose ρ scales W's columns, or -1
    std::vector<std::int64_t> units;   ///< the gauge's units (empty: all)
    std::vector<std::size_t> consumers;  ///< the blocks whose columns index the units, in order
    std::size_t group = 0;  ///< the group whose betas and eps the radial Adam uses
    /// The radial Adam's moments (h entries each, the plan's dtype), or null views: the site has
    /// none yet and cannot be split (step() refuses a step that would split it).
    TensorView exp_avg, exp_avg_sq;
};

/// Python's DDCAdam(form="split") step (optim/_split.py, docs/ddc.md "The split form") with its
/// structure validated and allocated once. check(grads, groups) takes the gradients, computes
/// every site's ρ of the decayed producers and the first pass's sums (reading each gradient once,
/// which also checks it: nothing is written); step(site_steps) takes the deferred blocks' sums,
/// runs each split site's per-unit step, the moments pass, the update's per-unit coefficients
/// and the apply pass, and increments the step counts. Decoupled weight decay is folded into
/// the passes (x read as x·(1 − lr·wd)). Every block, site and gauge tensor is float32 or every
/// one float64. The passes run on threads kept by the plan; the bits do not depend on them.
class DDCSplitPlan {
public:
    /// \throws std::invalid_argument for a block or site the split passes cannot take (messages
    ///         start with `fn`), a site order that is not topological.
    DDCSplitPlan(std::vector<SplitPlanBlock> blocks, std::vector<SplitPlanSite> sites,
                 std::vector<std::size_t> order, const char* fn = "deadspec.DDCSplitPlan");
    ~DDCSplitPlan();
    DDCSplitPlan(const DDCSplitPlan&) = delete;
    DDCSplitPlan& operator=(const DDCSplitPlan&) = delete;

    std::size_t num_blocks() const;
    std::size_t num_sites() const;

    /// This step's gradients (one per block; a null view: no gradient) and groups (lr·wd <= 1
    /// each). Returns the first block whose gradient is not finite, or -1.
    std::ptrdiff_t check(const std::vector<TensorView>& grads, const std::vector<PlanGroup>& groups);

    /// Whether site i is split this step (every block of it has a gradient), after check().
    bool split(std::size_t i) const;

    /// The rest of the step. `site_steps[i]`: the radial Adam's step count of site i before this
    /// step. Sets refused[k] to the elements of block k whose new moments or value were not
    /// finite (kept), site_refused[i] to the units of site i whose radial moments were not.
    /// \throws std::logic_error without check(), or a split site without its radial moments.
    void step(const std::vector<std::int64_t>& site_steps, std::vector<std::int64_t>& refused,
              std::vector<std::int64_t>& site_refused);

    struct Impl;

private:
    std::unique_ptr<Impl> m_impl;
};

/// The per-unit step (1)–(3) of one split site (DDCAdam form="split"), on the site's sums in the
/// parameters' dtype: q, g_in (Σ x̃², Σ g̃x̃ over its producer rows), n2, g_only (Σ (P x̃)²,
/// Σ g̃·P x̃ over its consumers that produce for no site), g_out (Σ g̃·P x̃ over all its
/// consumers), h entries each. A unit is live where q > ½ and it is in `units` (empty: all).
/// Steps the radial scalar Adam (exp_avg, exp_avg_sq, h entries, written; step: its count
/// after this step; a unit whose new moments are not finite keeps them) and writes `out`
/// ((8 + lrs.size())×h, contiguous, the dtype): live (1/0), q (1 where dead), n2 (0 where not
/// split), n2 where > 0 else 1, the radial direction −m̂/(√v̂ + ε)/√2 (0 where dead), the
/// radial coefficients of g̃ along rows (g_in/q) and columns (g_only/n2), the column norms √n2
/// (1 where not split), then per lr the radial factor exp(lr·direction). Returns the units
/// refused.
struct SplitUnitsArgs {
    TensorView q, g_in, n2, g_out, g_only;
    std::vector<std::int64_t> units;
    TensorView exp_avg, exp_avg_sq;
    std::int64_t step = 1;
    double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
    std::vector<double> lrs;
    TensorView out;
};
std::int64_t ddc_split_units(const SplitUnitsArgs& args, const char* fn = "deadspec.ddc_split_units");

}  // namespace deadspec
