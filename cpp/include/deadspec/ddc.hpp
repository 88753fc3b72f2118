// SPDX-License-Identifier: Apache-2.0
// Dead-Direction Conditioner kernels: the fused per-block step of DDCAdam (theory.md §6).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "deadspec/types.hpp"

namespace deadspec {

/// Hyper-parameters of one bias-corrected Adam step (`step` counts from 1).
struct AdamStep {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    std::int64_t step = 1;
    double decay = 1.0;  ///< decoupled weight decay as a factor on x before the step (1 − lr·wd)
};

/// One fused pass of DDCAdam over a parameter block, in place.
///
/// The optimizer keeps its moments on the invariant coordinates x̃ = x/σ of the block, where
/// σ_ij = ρ_row,i / ρ_col,j comes from the gauge-fixing scales (docs/ddc.md). Per element:
/// g̃ = g·σ; m ← β₁m + (1−β₁)g̃; v ← β₂v + (1−β₂)g̃²;
/// x ← x − (lr/(1−β₁ᵗ))·m/(√v/√(1−β₂ᵗ) + ε)·σ. The bias corrections are computed in float64,
/// the per-element arithmetic in the parameter's dtype (as torch's Adam does). Calls with more
/// than 2²¹ elements in all are split by row ranges over deadspec::num_threads() threads (see
/// ddc_adam_update_many).
/// Decoupled weight decay: `hp.decay` multiplies x first, in the same pass (1 = none).
///
/// \param param       1-D or 2-D float32/float64 CPU tensor, C-contiguous, writable.
/// \param grad        same shape and dtype, any strides.
/// \param exp_avg     first moment, same shape and dtype as param, C-contiguous, writable.
/// \param exp_avg_sq  second moment, likewise.
/// \param scale       σ with param's shape and any strides (0-strides: a broadcast row or column
///                    vector), float32/float64; a view with a null data pointer means σ = 1.
/// No non-finite value is ever written: each element's new x, m and v are checked before they
/// are written, and an element whose new values are not all finite (an overflow: g̃ or the
/// second moment beyond the dtype's range, a 0/0 with eps = 0) keeps its pre-step x, m and v.
/// A step that overflows nowhere is unchanged by the check (it costs no extra pass). v is
/// accumulated in AdamW's order, ((1−β₂)·g̃)·g̃, so it overflows where AdamW's does.
/// \throws std::invalid_argument on shape/dtype/layout mismatch, a read-only output, step < 1,
///         lr < 0 or non-finite, betas outside [0, 1), eps < 0, or a non-finite decay.
/// \throws deadspec::DeviceError for non-CPU tensors.
/// \throws deadspec::Error after the pass if an element was refused (every other element has
///         been stepped); ddc_adam_update_many's counting overload reports instead.
void ddc_adam_update(const TensorView& param, const TensorView& grad, const TensorView& exp_avg,
                     const TensorView& exp_avg_sq, const TensorView& scale, const AdamStep& hp);

/// ddc_adam_update with σ_ij = scale_ij · col_scale_j: `col_scale` (a vector with one entry per
/// column of a 2-D param, any stride, or a null view) lets a block scaled on both sides pass its
/// row and column scales as two vectors instead of a materialised h×d σ.
void ddc_adam_update(const TensorView& param, const TensorView& grad, const TensorView& exp_avg,
                     const TensorView& exp_avg_sq, const TensorView& scale,
                     const TensorView& col_scale, const AdamStep& hp);

/// One block of a batched DDCAdam step (see ddc_adam_update for each field).
struct AdamBlock {
    TensorView param, grad, exp_avg, exp_avg_sq;
    TensorView scale;      ///< σ broadcast to param's shape, or a null view (1)
    TensorView col_scale;  ///< per-column factor of σ (2-D param), or a null view
    AdamStep hp;
    /// Head rotations (DDCAdam's HeadRotation gauge): -1 for none, else the axis (0: rows,
    /// 1: columns of a 2-D param; 0 for a 1-D param) along which `rot_segments` — ascending,
    /// disjoint [start, stop) ranges, one per rotated head — are rotated. Within a segment the
    /// second-moment input g̃² is replaced by its mean over the segment, so v is invariant and
    /// m/(√v + ε) rotates with the gradient. σ must be constant along the rotated axis.
    int rot_axis = -1;
    std::vector<std::pair<std::int64_t, std::int64_t>> rot_segments;
    /// The check before commit. true: an element whose new x or v is not finite keeps its
    /// pre-step x, m and v (see ddc_adam_update). false: every element is written and the
    /// non-finite ones are only counted (about a quarter cheaper: a caller that has screened
    /// the step, e.g. Python's DDCAdam, which knows its gradients' norms and scales, and keeps
    /// `true` for a step that could overflow); a nonzero count then means non-finite values
    /// were written.
    bool keep = true;
};

/// ddc_adam_update over many blocks in one call: every block is validated before any is
/// written, then row ranges of all blocks are shared out over deadspec::num_threads() threads
/// (small blocks no longer run one at a time). Each element is written by one thread, so the
/// result is the same as stepping the blocks one by one.
/// \throws deadspec::Error after the pass if an element of any block was refused (see
///         ddc_adam_update); the other elements have been stepped.
void ddc_adam_update_many(const std::vector<AdamBlock>& blocks);

/// ddc_adam_update_many reporting instead of throwing: `refused[k]` is set to the number of
/// elements of blocks[k] whose new x, m or v was not finite (they keep their pre-step values;
/// 0 for a block the step did not overflow in). The caller applies its policy (DDCAdam's
/// raise_on_nonfinite, the Python optimizers' `nonfinite=`).
void ddc_adam_update_many(const std::vector<AdamBlock>& blocks,
                          std::vector<std::int64_t>& refused);

/// One block of a split-form DDCAdam step (`form="split"`: theory.md §6, docs/ddc.md "The split
/// form"). The block's invariant coordinates are x̃ = x/σ with σ_ij = row_scale_i·col_scale_j,
/// its invariant gradient g̃ = g·σ, and P x̃ = x̃ − col_mean (the column means of x̃ removed; no
/// centring without col_mean). A 1-D block is a column (h×1): each element is the row of its own
/// unit (a producer's bias, a norm's γ or β), and row_scale / row_coef / row_mult have one entry
/// per element.
///
/// Three passes, each over a list of blocks (all validated before any is written):
/// ddc_split_sums (no write), ddc_split_moments (writes the moments), ddc_split_apply (writes
/// the parameter). Between them the caller combines the sums of the blocks of one unit (a
/// producer's weight row and bias, a site's several consumers) into the per-unit coefficients.
struct SplitBlock {
    TensorView param, grad, exp_avg, exp_avg_sq;
    TensorView row_scale;  ///< σ's row factor (h entries), or a null view (1)
    TensorView col_scale;  ///< σ's column factor (d entries, 2-D param), or a null view (1)
    TensorView col_mean;   ///< column means of x̃ to centre by (d entries), or a null view
    /// The radial coefficient along each x̃ row (a producer block: v ← v − a_i·x̃_i), or null.
    TensorView row_coef;
    /// The radial coefficient along each P x̃ column (a consumer block: v ← (v − b_j·P x̃_j)·n_j),
    /// or null; `col_norm` holds the n_j (required with col_coef).
    TensorView col_coef, col_norm;
    /// ddc_split_apply only: radial factors on the rows and the columns of x (null: 1). With
    /// col_mean, the column factor scales P x only (x + (c_j − 1)·σ·P x̃), not the column mean.
    TensorView row_mult, col_mult;
    /// lr, betas, eps, step, and decay: x is read as x·decay in every pass (decoupled weight
    /// decay folded in, |decay| <= 1; 1: decayed before), and an element apply refuses keeps it.
    AdamStep hp;
    /// As AdamBlock: the second-moment input is shared within each rotated segment.
    int rot_axis = -1;
    std::vector<std::pair<std::int64_t, std::int64_t>> rot_segments;
};

/// Sums of one split block (float64): per row Σ g̃·x̃ and Σ x̃², per column Σ g̃·P x̃ and
/// Σ (P x̃)² (empty vectors for a 1-D block's columns). σ, 1/σ, x̃ = x·(1/σ), g̃ = g·σ and P x̃
/// are formed in the parameter's dtype and their products summed in float64, not scaled: a sum
/// is ±inf where its exact value exceeds float64 (Σ x̃² of parameters near 1e300, say), and
/// non-finite (±inf or NaN) where one of its elements has one of those quantities beyond the
/// parameter's dtype (g·σ of a huge scale, say); finite otherwise. The optimizer's check before
/// commit refuses the coordinates such a step would make non-finite.
struct SplitSums {
    Eigen::VectorXd row_gx, row_xx, col_gx, col_xx;
};

/// Pass 0 of the split step: the block sums (the radial gradients and the block norms).
/// \throws deadspec::Error (every pass) for a row_scale or col_scale entry that is not a
///         positive scale, finite with its reciprocal in the parameter's dtype.
std::vector<SplitSums> ddc_split_sums(const std::vector<SplitBlock>& blocks);

/// Pass 1: the tangential input t = (g̃ − radial part)·(norm), the Adam moments on it, and the
/// update u = lr/(1−β₁ᵗ)·m/(√v/√(1−β₂ᵗ) + ε). Returns per block (Σ u·x̃ per row, Σ u·P x̃ per
/// column): the radial parts of the update, for the re-projection. v is accumulated in AdamW's
/// order ((1−β₂)·t)·t; an element whose new m or v is not finite keeps its pre-step moments
/// (and its u is that of the moments as stored; u = 0 where √v̂ + ε = 0). The returned sums
/// follow ddc_split_sums' rule, u among the quantities formed in the parameter's dtype.
/// \throws deadspec::Error after the pass if an element was refused (the counting overload
///         reports instead).
std::vector<std::pair<Eigen::VectorXd, Eigen::VectorXd>> ddc_split_moments(
    const std::vector<SplitBlock>& blocks);

/// ddc_split_moments reporting instead of throwing: `refused[k]` is set to the number of
/// elements of blocks[k] whose new moments were not finite (kept at their pre-step values).
std::vector<std::pair<Eigen::VectorXd, Eigen::VectorXd>> ddc_split_moments(
    const std::vector<SplitBlock>& blocks, std::vector<std::int64_t>& refused);

/// Pass 2: u recomputed from the moments, re-projected with the coefficients now given in
/// row_coef / col_coef (those of the update), and applied: x ← x·r_i·c_j − σ·u. An element whose
/// new x is not finite keeps its pre-step value.
/// \throws deadspec::Error after the pass if an element was refused (the counting overload
///         reports instead).
void ddc_split_apply(const std::vector<SplitBlock>& blocks);

/// ddc_split_apply reporting instead of throwing: `refused[k]` is set to the number of elements
/// of blocks[k] whose new x was not finite (kept at its pre-step value).
void ddc_split_apply(const std::vector<SplitBlock>& blocks, std::vector<std::int64_t>& refused);

/// Row norms of [W·diag(col_scale) | b]: the gauge-fixing scales ρ of a producer layer.
///
/// \param weight     h×d float32/float64 CPU tensor, any strides.
/// \param col_scale  d scales (float32/float64) or a null view for none.
/// \param bias       h entries (float32/float64) or a null view for none.
/// \param weight_factor, bias_factor  factors on W and b (the norms of the decayed block
///                    (f_w·W, f_b·b) without writing it), finite.
/// \return           h norms √(f_w²‖W_i·diag(c)‖² + f_b²b_i²), accumulated in float64. A row
///                    whose plain sum of squares overflows is recomputed with its terms scaled
///                    by a power of two (only those rows), so for finite inputs +inf means the
///                    norm itself exceeds float64.
Eigen::VectorXd ddc_row_norms(const TensorView& weight, const TensorView& col_scale,
                              const TensorView& bias, double weight_factor = 1.0,
                              double bias_factor = 1.0);

/// Sums of x⊙g and |x⊙g| along one axis of a 2-D block, in one pass and without temporaries:
/// the log-norm gradients ĝ of a gauge's producer rows (axis = 1) or consumer columns (axis = 0).
///
/// \param x, g  h×d float32/float64 CPU tensors of one shape, any strides.
/// \param axis  1: one sum per row (h values); 0: one sum per column (d values).
/// \return      (Σ x·g, Σ |x·g|), float64, not scaled: ±inf where the exact sum exceeds
///              float64.
std::pair<Eigen::VectorXd, Eigen::VectorXd> ddc_gauge_dots(const TensorView& x,
                                                           const TensorView& g, int axis);

}  // namespace deadspec
