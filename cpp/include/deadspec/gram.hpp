// SPDX-License-Identifier: Apache-2.0
// Activation Gram: (1/N) XᵀX or (1/N) XXᵀ, one-shot or streamed over batches.
#pragma once

#include <cstdint>

#include "deadspec/types.hpp"

namespace deadspec {

/// Which side the Gram of an N×h matrix is formed on.
enum class GramSide {
    Auto,     ///< the smaller of the two (same non-zero spectrum)
    Feature,  ///< h×h: (1/N) XᵀX
    Sample,   ///< N×N: (1/N) XXᵀ
};

struct GramOptions {
    GramSide side = GramSide::Auto;
    /// Subtract the column (feature) means before forming the Gram.
    bool center = false;
};

/// The side `opts.side` resolves to for an N×h input (Auto picks the smaller; ties: Feature).
GramSide resolve_gram_side(std::int64_t n, std::int64_t h, GramSide side);

/// Activation Gram of a 2-D tensor.
///
/// \param x     N×h activations, float32 or float64, CPU, any strides; accumulated in float64.
/// \param opts  side and centring.
/// \return      h×h \f$\frac1N X^\top X\f$ (Feature) or N×N \f$\frac1N XX^\top\f$ (Sample),
///              float64, symmetric. Centring subtracts the column means of X first.
/// \throws std::invalid_argument if x is not 2-D, is empty, or holds NaN/Inf.
/// \throws deadspec::DTypeError  if x is not float32/float64.
/// \throws deadspec::DeviceError if x is not on the CPU (this build has no CUDA backend).
///
/// \code{.cpp}
/// std::vector<double> a = {1, 0, 0, 1, 1, 1};              // 3 samples × 2 features
/// auto g = deadspec::gram(deadspec::TensorView::cpu(a.data(), {3, 2}));
/// // g = [[2/3, 1/3], [1/3, 2/3]]
/// \endcode
RowMatrixXd gram(const TensorView& x, const GramOptions& opts = {});

/// Streaming feature-side Gram: add batches of rows, merge accumulators, read the Gram.
///
/// Keeps the running mean and the centred scatter (Chan et al.'s pairwise update), so the
/// centred Gram is accurate even when the mean is large, and N can exceed memory.
class GramAccumulator {
public:
    /// \param features  h, the number of columns every batch must have (> 0).
    /// \throws std::invalid_argument if h is not positive, or if the h×h float64 scatter it
    ///         keeps (8·h² bytes) exceeds the machine's physical memory: refused before anything
    ///         is allocated, instead of an allocation that fails late or is killed.
    explicit GramAccumulator(std::int64_t features);

    /// Add a B×h batch (float32/float64, CPU, any strides). An empty batch (B = 0) is a no-op.
    void add(const TensorView& batch);
    /// Add everything `other` has seen (same number of features).
    void merge(const GramAccumulator& other);
    /// h×h Gram of all rows seen so far, divided by their count.
    /// \throws std::invalid_argument if no row has been added.
    RowMatrixXd gram(bool center = false) const;

    std::int64_t count() const { return m_count; }
    std::int64_t features() const { return m_features; }
    const Eigen::VectorXd& mean() const { return m_mean; }

private:
    std::int64_t m_features;
    std::int64_t m_count = 0;
    Eigen::VectorXd m_mean;
    Eigen::MatrixXd m_scatter;  // lower triangle of Σ (x - mean)(x - mean)ᵀ
};

}  // namespace deadspec
