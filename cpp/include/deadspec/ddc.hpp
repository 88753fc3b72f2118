// SPDX-License-Identifier: Apache-2.0
// Dead-Direction Conditioner kernels: the fused per-block step of DDCAdam (theory.md §6).
#pragma once

#include <cstdint>
#include <utility>

#include "deadspec/types.hpp"

namespace deadspec {

/// Hyper-parameters of one bias-corrected Adam step (`step` counts from 1).
struct AdamStep {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    std::int64_t step = 1;
};

/// One fused pass of DDCAdam over a parameter block, in place.
///
/// The optimizer keeps its moments on the invariant coordinates x̃ = x/σ of the block, where
/// σ_ij = ρ_row,i / ρ_col,j comes from the gauge-fixing scales (docs/ddc.md). Per element:
/// g̃ = g·σ; m ← β₁m + (1−β₁)g̃; v ← β₂v + (1−β₂)g̃²;
/// x ← x − (lr/(1−β₁ᵗ))·m/(√v/√(1−β₂ᵗ) + ε)·σ. The bias corrections are computed in float64,
/// the per-element arithmetic in the parameter's dtype (as torch's Adam does). Blocks of more
/// than 2¹⁸ elements are split by rows over deadspec::num_threads() threads.
/// Decoupled weight decay is applied by the caller beforehand.
///
/// \param param       1-D or 2-D float32/float64 CPU tensor, C-contiguous, writable.
/// \param grad        same shape and dtype, any strides.
/// \param exp_avg     first moment, same shape and dtype as param, C-contiguous, writable.
/// \param exp_avg_sq  second moment, likewise.
/// \param scale       σ with param's shape and any strides (0-strides: a broadcast row or column
///                    vector), float32/float64; a view with a null data pointer means σ = 1.
/// \throws std::invalid_argument on shape/dtype/layout mismatch, a read-only output, step < 1,
///         or a non-finite σ.
/// \throws deadspec::DeviceError for non-CPU tensors.
void ddc_adam_update(const TensorView& param, const TensorView& grad, const TensorView& exp_avg,
                     const TensorView& exp_avg_sq, const TensorView& scale, const AdamStep& hp);

/// Row norms of [W·diag(col_scale) | b]: the gauge-fixing scales ρ of a producer layer.
///
/// \param weight     h×d float32/float64 CPU tensor, any strides.
/// \param col_scale  d scales (float32/float64) or a null view for none.
/// \param bias       h entries (float32/float64) or a null view for none.
/// \return           h norms, accumulated in float64.
Eigen::VectorXd ddc_row_norms(const TensorView& weight, const TensorView& col_scale,
                              const TensorView& bias);

/// Sums of x⊙g and |x⊙g| along one axis of a 2-D block, in one pass and without temporaries:
/// the log-norm gradients ĝ of a gauge's producer rows (axis = 1) or consumer columns (axis = 0).
///
/// \param x, g  h×d float32/float64 CPU tensors of one shape, any strides.
/// \param axis  1: one sum per row (h values); 0: one sum per column (d values).
/// \return      (Σ x·g, Σ |x·g|), float64.
std::pair<Eigen::VectorXd, Eigen::VectorXd> ddc_gauge_dots(const TensorView& x,
                                                           const TensorView& g, int axis);

}  // namespace deadspec
