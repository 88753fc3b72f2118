// SPDX-License-Identifier: Apache-2.0
// Per-sample-gradient Fisher-Gram K = (1/N) ΓΓᵀ of a linear layer, without materialising Γ.
#pragma once

#include <cstdint>

#include "deadspec/types.hpp"

namespace deadspec {

/// How the Fisher-Gram of a sequence (N×T×d) linear layer is formed.
enum class FisherRoute {
    Auto,         ///< the faster of the two by a cost model of the measured BLAS rates
    BlockSum,     ///< K = Σ_{t,s} (A_t A_sᵀ)∘(D_t D_sᵀ) / N over position pairs (dgemm)
    Materialize,  ///< Γ_i = A_iᵀ D_i in column tiles (batched dgemm), K = ΓΓᵀ / N (dgemmt)
};

struct FisherGramOptions {
    /// Add the bias block: (Σ_t δ_it)·(Σ_s δ_js) / N.
    bool bias = false;
    FisherRoute route = FisherRoute::Auto;
    /// Upper bound on the scratch memory (float64 copies of input blocks, tiles of Γ), in bytes,
    /// beyond the N×N result. At the default the core takes 1/8 of a float64 Γ (N·d_in·d_out·8),
    /// between 32 MiB and this value.
    std::int64_t chunk_bytes = std::int64_t(256) << 20;
};

/// Multiply-add counts of the two exact routes: block sums (NT)²(d_in + d_out)/2 (two symmetric
/// (NT)×(NT) Grams), materialise N·T·d_in·d_out + N²·d_in·d_out/2 (Γ, then half of ΓΓᵀ).
struct FisherGramCost {
    double block_sum;
    double materialize;
};
FisherGramCost fisher_gram_cost(std::int64_t n, std::int64_t t, std::int64_t d_in,
                                std::int64_t d_out);
/// The route `Auto` resolves to for these sizes: the lower estimated time, from the counts above
/// weighted by the relative BLAS rates measured for each part (small-k batched products, dgemmt,
/// Hadamard sums). T = 1 always uses the block sum (one Hadamard product).
FisherRoute resolve_fisher_route(std::int64_t n, std::int64_t t, std::int64_t d_in,
                                 std::int64_t d_out, FisherRoute route);

/// Fisher-Gram of a linear layer z = W a (+ b) from its inputs and output gradients.
///
/// For 2-D inputs \f$K_{ij} = (a_i\cdot a_j)(\delta_i\cdot\delta_j)/N\f$; for 3-D (sequence)
/// inputs \f$K_{ij} = \langle g_i, g_j\rangle / N\f$ with \f$g_i = \sum_t \delta_{it} a_{it}^\top\f$.
/// δ_i must be the gradient of sample i's *own* loss with respect to z_i.
///
/// \param acts   N×d_in or N×T×d_in layer inputs (float32/float64, CPU, any strides).
/// \param grads  N×d_out or N×T×d_out gradients of the per-sample losses w.r.t. the outputs.
/// \return       N×N float64 symmetric positive semi-definite matrix.
/// \throws std::invalid_argument on mismatched N or T, wrong ndim, empty input or NaN/Inf.
///
/// \code{.cpp}
/// // 2 samples, d_in = 2, d_out = 1
/// std::vector<double> a = {1, 0, 0, 2}, d = {3, 1};
/// auto k = deadspec::fisher_gram(deadspec::TensorView::cpu(a.data(), {2, 2}),
///                                deadspec::TensorView::cpu(d.data(), {2, 1}));
/// // k = [[9/2, 0], [0, 2]]
/// \endcode
RowMatrixXd fisher_gram(const TensorView& acts, const TensorView& grads,
                        const FisherGramOptions& opts = {});

/// Fisher-Gram from materialised per-sample gradients: N×p (or N×… flattened), K = ΓΓᵀ / N.
RowMatrixXd fisher_gram_from_grads(const TensorView& per_sample_grads);

}  // namespace deadspec
