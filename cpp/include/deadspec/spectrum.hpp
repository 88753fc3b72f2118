// SPDX-License-Identifier: Apache-2.0
// Spectral readings of a Gram: log det⁺ of the active part, counts, λ_min, effective rank.
#pragma once

#include <cstdint>

#include "deadspec/sym_eig.hpp"
#include "deadspec/types.hpp"

namespace deadspec {

struct SpectrumOptions {
    /// Relative threshold: μ_i is active when μ_i > rtol·μ_1. A negative value selects the
    /// default rtol_size·ε(input_dtype) (numpy's matrix_rank rule).
    double rtol = -1.0;
    /// dtype of the data the Gram was built from (sets ε of the default rtol).
    DType input_dtype = DType::Float64;
    /// max(shape) of that data; 0 means the matrix dimension m.
    std::int64_t rtol_size = 0;
    /// A dead cluster is counted only below a gap of at least this ratio between consecutive
    /// active eigenvalues.
    double gap_ratio = 1e3;
    /// Keep the eigenvectors in the result.
    bool vectors = false;
};

/// What deadspec reads off one spectrum (theory.md §3).
struct Spectrum {
    Eigen::VectorXd eigenvalues;   ///< descending, round-off negatives clipped to 0
    Eigen::MatrixXd eigenvectors;  ///< columns, matching eigenvalues; empty unless asked
    double logdet_plus = 0.0;      ///< Σ_{active} log μ_i (0 for an empty active set)
    std::int64_t active = 0;       ///< #{μ_i > threshold}
    std::int64_t structural_zeros = 0;  ///< m − active
    std::int64_t dead_count = 0;   ///< active eigenvalues below the largest log-gap (≥ gap_ratio)
    std::int64_t clipped = 0;      ///< eigenvalues < 0 clipped to 0
    double lambda_min = 0.0;       ///< smallest active eigenvalue (0 if none)
    double effective_rank = 0.0;   ///< exp(entropy of μ/Σμ) over the active set
    double participation_ratio = 0.0;  ///< (Σμ)² / Σμ² over the active set
    double condition_number = 0.0; ///< μ_1 / λ_min over the active set (0 if none)
    double threshold = 0.0;        ///< rtol·μ_1
    double rtol = 0.0;             ///< the rtol used
    EigStatus status = EigStatus::Success;
};

/// ε(dtype)·size: the default relative threshold.
double default_rtol(DType input_dtype, std::int64_t size);

/// Readings from a set of eigenvalues (any order; sorted descending here).
///
/// Scale-invariant: effective_rank and participation_ratio are computed on the active
/// eigenvalues scaled by a power of two (μ_1 into [½, 1)), so they are finite for any finite
/// eigenvalues (1e±300 included) and equal to the formulas of theory.md §3.2.
/// \throws std::invalid_argument if values is empty or holds NaN/Inf.
/// \throws std::overflow_error if condition_number = μ_1/λ_min exceeds float64 (only possible
///         with a tiny rtol: pass a larger one).
Spectrum spectrum_from_eigenvalues(const Eigen::VectorXd& values, const SpectrumOptions& opts = {});

/// Eigendecomposition of a symmetric PSD matrix and its readings.
///
/// \param g  m×m float32/float64 symmetric matrix (a Gram), CPU, any strides.
/// \throws std::invalid_argument if g is not square, empty, not symmetric (relative asymmetry
///         > 1e-6 in float64, 1e-3 in float32) or holds NaN/Inf.
/// \throws deadspec::Error if the eigensolver does not converge.
/// \throws std::overflow_error if an eigenvalue exceeds float64 (a finite g can have one) or
///         condition_number does (see spectrum_from_eigenvalues).
///
/// \code{.cpp}
/// auto g = deadspec::gram(deadspec::TensorView::cpu(x.data(), {n, h}));
/// deadspec::Spectrum s = deadspec::spectrum(deadspec::TensorView::cpu(g));
/// std::cout << s.logdet_plus << " over " << s.active << " active directions\n";
/// \endcode
Spectrum spectrum(const TensorView& g, const SpectrumOptions& opts = {});

/// Σ log μ_i over the k largest eigenvalues of a descending vector (a fixed active set).
/// \throws std::invalid_argument if k exceeds the size or a selected eigenvalue is ≤ 0.
double logdet_top(const Eigen::VectorXd& descending, std::int64_t k);

}  // namespace deadspec
