// SPDX-License-Identifier: Apache-2.0
// DDCAdam for C++ trainers: hand-declared gauge sites, owned moments, ρ → σ → fused step.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "deadspec/ddc.hpp"
#include "deadspec/types.hpp"

namespace deadspec {

/// A per-unit rescaling gauge declared by hand (docs/ddc.md, "Gauges"): Python's
/// `deadspec.gauges.Pair` when `weight` is 2-D, `NormScale` when it is 1-D.
///
/// The units are the h rows of the producer `[weight | bias]` (a Linear layer's rows, or a
/// norm's (γ_i, β_i)) and the h columns of every consumer. The group element c ∈ (ℝ⁺)^h scales
/// unit i's producer row by c_i and its consumer columns by 1/c_i; declaring a site says that the
/// network function does not change under it (everything between producer and consumers is
/// elementwise and positively homogeneous of degree 1, e.g. ReLU). The C++ side checks shapes
/// only: that the declaration is a symmetry of the trainer's network is the caller's word
/// (Python's `Gauge.check` tests it numerically).
///
/// A site whose 2-D producer weight is a consumer of another site is chained to it (the
/// columns of its ρ are scaled by the other site's ρ, docs/ddc.md, "Coordinates"), as
/// `Chain` and consecutive `Pair`s are in Python.
struct GaugeSite {
    TensorView weight;                  ///< producer: h×d Linear weight, or a norm's γ (h)
    TensorView bias;                    ///< producer bias or β (h entries), or a null view
    std::vector<TensorView> consumers;  ///< weights whose columns are the units (k×h each)
    /// The gauged units (distinct indices in [0, h)); empty: all h. The other units keep σ = 1.
    std::vector<std::int64_t> units;
    std::string name;  ///< for messages; empty: "site <index>"
};

/// Hyper-parameters of DDCAdam (those of torch's AdamW; decoupled weight decay, default 0).
struct DDCAdamOptions {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;
    /// A NaN/Inf gradient: throw deadspec::Error (true) or skip the whole step, parameters and
    /// moments untouched, and return false from step() (false). The same for a step that would
    /// write a non-finite value (an overflow): those elements keep their pre-step parameter and
    /// moments (see ddc_adam_update), the others are stepped, then step() throws (true) or
    /// returns false (false).
    bool raise_on_nonfinite = true;
};

/// DDCAdam (theory.md §6.3; docs/ddc.md, "From C++") for a trainer that owns its parameters
/// in C++.
///
/// The optimizer keeps the Adam moments of every parameter block and, each step, computes the
/// gauge-fixing scales of the declared sites in topological order — ρ = row norms of
/// [W·diag(ρ_in) | b] of the weight-decayed producer (ddc_row_norms), rounded to the producer's
/// dtype, 1 where ρ ≤ the dtype's smallest normal, where ρ overflows the dtype or outside
/// `units` — and steps all blocks in
/// one ddc_adam_update_many call with σ_ij = ρ_row,i / ρ_col,j (a producer's rows take its
/// site's ρ, a consumer's columns 1/ρ). This is the coordinate form of Python's
/// `deadspec.optim.DDCAdam` with `gauge_mode="zero"` on CPU: on the same parameters, gradients
/// and hyper-parameters the step is the same computation, element for element. Logit shifts
/// and head rotations are not declared here (ddc_adam_update_many takes rotated blocks).
///
/// The optimizer does not own the parameters: it keeps the views given to the constructor and
/// writes through them, so their memory must stay valid and in place while it is used.
///
/// \code{.cpp}
/// // fc1 → ReLU → fc2: the hidden units of fc1 are a Pair.
/// deadspec::DDCAdam opt({w1, b1, w2, b2}, {deadspec::GaugeSite{w1, b1, {w2}, {}, "fc1"}},
///                       {/*lr=*/1e-3});
/// // ... backward ...
/// opt.step({gw1, gb1, gw2, gb2});     // a null view: that parameter has no gradient this step
/// \endcode
class DDCAdam {
public:
    /// \param params  the parameter blocks, float32/float64 CPU tensors, C-contiguous, writable,
    ///                distinct. Blocks of a site are 1-D or 2-D; any other block (σ = 1) may have
    ///                any number of dimensions (it is stepped as a flat vector).
    /// \param sites   the declared gauges; each tensor of a site must be one of `params`
    ///                (matched by data pointer, shape and dtype).
    /// \throws std::invalid_argument on a bad parameter (dtype/device as in ddc_adam_update),
    ///         a site tensor not among the params, shapes that do not fit (bias or consumer
    ///         columns ≠ h, a consumer that is not 2-D), units out of range or repeated, a
    ///         producer shared by two sites, a consumer in two sites, a cycle of chained sites,
    ///         or bad options (lr < 0 or not finite, betas outside [0, 1), eps < 0,
    ///         weight_decay < 0 or not finite).
    DDCAdam(std::vector<TensorView> params, std::vector<GaugeSite> sites,
            const DDCAdamOptions& options = {});

    /// One step, in place: decoupled weight decay folded into the update (x·(1 − lr·wd)), ρ of
    /// the decayed producers, then every block with a gradient in one fused pass, checked before
    /// commit. The pass over each gradient that checks it is finite also takes its largest
    /// entry: a block whose step cannot overflow (that entry times σ's largest far inside the
    /// dtype, as Python's DDCAdam screens it) skips the kernel's per-element keep (AdamBlock::
    /// keep), a quarter of its time; the result is the same either way.
    ///
    /// \param grads  one view per parameter, in the constructor's order: same shape and dtype,
    ///               any strides (C-contiguous for a block stepped flat), or a null view for a
    ///               parameter without a gradient (skipped: no decay, no moment update, its step
    ///               count unchanged; it still enters the ρ of its site, as in Python).
    /// \return       false when a non-finite gradient skipped the step, or when elements of
    ///               the step overflowed and kept their pre-step values (raise_on_nonfinite =
    ///               false), else true.
    /// \throws std::invalid_argument on a wrong count, shape or dtype (nothing written).
    /// \throws deadspec::Error on a NaN/Inf gradient with raise_on_nonfinite (nothing written),
    ///         or, with raise_on_nonfinite, naming the first parameter in which elements of the
    ///         step overflowed (those keep their pre-step values; the others are stepped).
    bool step(const std::vector<TensorView>& grads);

    /// The gauge scales ρ of each site (in the constructor's order) for the current
    /// parameters, as the step computes them (without decay).
    std::vector<Eigen::VectorXd> scales() const;

    /// First and second moments of parameter `i` (views of the optimizer's own buffers, the
    /// parameter's shape and dtype; valid while the optimizer lives). They live on the
    /// invariant coordinates x̃ = x/σ.
    TensorView exp_avg(std::size_t i) const;
    TensorView exp_avg_sq(std::size_t i) const;
    /// Steps taken by parameter `i` (its Adam bias-correction count).
    std::int64_t steps(std::size_t i) const;

    std::size_t num_params() const { return m_params.size(); }
    std::size_t num_sites() const { return m_sites.size(); }
    const DDCAdamOptions& options() const { return m_options; }
    /// Replace the hyper-parameters (e.g. a learning-rate schedule); validated as in the
    /// constructor. The moments are kept.
    void set_options(const DDCAdamOptions& options);

private:
    struct Site {
        std::string name;
        std::size_t weight = 0;        // index into m_params
        std::ptrdiff_t bias = -1;      // index, or -1
        std::vector<std::size_t> consumers;
        std::vector<std::int64_t> units;
        std::int64_t size = 0;         // h
        std::ptrdiff_t in_site = -1;   // the site whose consumer the producer weight is
    };
    struct Block {
        TensorView param;  // as stepped (a block outside every site: flattened to 1-D)
        std::vector<std::byte> exp_avg, exp_avg_sq;
        std::int64_t step = 0;
        std::ptrdiff_t row_site = -1, col_site = -1;
    };
    // ρ of every site (one buffer per site, in the producer weight's dtype) and 1/ρ, for the
    // given decay factors per parameter.
    void compute_scales(const std::vector<double>& factors,
                        std::vector<std::vector<std::byte>>& rho,
                        std::vector<std::vector<std::byte>>& inv) const;
    std::size_t param_index(const TensorView& t, const std::string& site, const char* what) const;
    void add_site(const GaugeSite& site, std::size_t index);
    void order_sites();

    std::vector<Block> m_params;
    std::vector<Site> m_sites;
    std::vector<std::size_t> m_order;  // topological order of the sites
    DDCAdamOptions m_options;
};

}  // namespace deadspec
