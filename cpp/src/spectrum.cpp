// SPDX-License-Identifier: Apache-2.0
// Spectral readings (theory.md §3): active set, log det⁺, dead-cluster count, λ_min, ranks.
#include "deadspec/spectrum.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <stdexcept>

#include "detail/core.hpp"

namespace deadspec {

double default_rtol(DType input_dtype, std::int64_t size) {
    return static_cast<double>(std::max<std::int64_t>(size, 1)) * dtype_eps(input_dtype);
}

Spectrum spectrum_from_eigenvalues(const Eigen::VectorXd& values, const SpectrumOptions& opts) {
    constexpr const char* fn = "deadspec.spectrum";
    DEADSPEC_CHECK_ARG(values.size() > 0, fn, ": eigenvalues must not be empty");
    DEADSPEC_CHECK_ARG(values.allFinite(), fn, ": eigenvalues must be finite, got NaN or Inf");
    DEADSPEC_CHECK_ARG(opts.gap_ratio > 1.0, fn, ": gap_ratio must be > 1, got ", opts.gap_ratio);
    DEADSPEC_CHECK_ARG(!(opts.rtol >= 1.0), fn, ": rtol must be < 1 (a relative threshold), got ",
                       opts.rtol);

    Spectrum s;
    const auto m = static_cast<std::int64_t>(values.size());
    s.eigenvalues = values;
    std::sort(s.eigenvalues.data(), s.eigenvalues.data() + m, std::greater<double>());
    for (std::int64_t i = 0; i < m; ++i)
        if (s.eigenvalues[i] < 0.0) {
            s.eigenvalues[i] = 0.0;
            ++s.clipped;
        }
    s.rtol = opts.rtol >= 0.0 ? opts.rtol
                              : default_rtol(opts.input_dtype, opts.rtol_size > 0 ? opts.rtol_size : m);
    const double mu1 = s.eigenvalues[0];
    s.threshold = s.rtol * mu1;
    while (s.active < m && s.eigenvalues[s.active] > s.threshold && s.eigenvalues[s.active] > 0.0)
        ++s.active;
    s.structural_zeros = m - s.active;
    if (s.active == 0) return s;

    const auto act = s.eigenvalues.head(s.active);
    s.logdet_plus = act.array().log().sum();
    s.lambda_min = act[s.active - 1];
    s.condition_number = mu1 / s.lambda_min;
    if (!std::isfinite(s.condition_number))
        throw std::overflow_error(detail::concat(
            fn, ": the condition number μ_1/λ_min = ", mu1, "/", s.lambda_min,
            " overflows float64; pass a larger rtol (the active set would end above ",
            mu1 / std::numeric_limits<double>::max(), ")"));
    // The active eigenvalues scaled by 2^−e, μ_1·2^−e ∈ [½, 1): a power of two scales every
    // operation below exactly, so the readings are those of the unscaled formulas (theory.md
    // §3.2) wherever those are representable, and finite where Σμ or Σμ² would overflow.
    int e = 0;
    std::frexp(mu1, &e);
    const Eigen::ArrayXd q = act.array().unaryExpr([e](double v) { return std::ldexp(v, -e); });
    const double total = q.sum();
    const Eigen::ArrayXd p = q / total;
    // 0·log 0 = 0: a p_i that underflows (μ_i/Σμ below the smallest double) adds nothing
    s.effective_rank =
        std::exp(-(p > 0.0).select(p * p.log(), Eigen::ArrayXd::Zero(p.size())).sum());
    s.participation_ratio = total * total / q.square().sum();

    // Dead cluster: the active eigenvalues below the largest gap in log μ, if that gap is wide.
    double best_gap = 0.0;
    std::int64_t best = -1;
    for (std::int64_t i = 0; i + 1 < s.active; ++i) {
        const double gap = std::log(act[i]) - std::log(act[i + 1]);
        if (gap > best_gap) {
            best_gap = gap;
            best = i;
        }
    }
    if (best >= 0 && best_gap >= std::log(opts.gap_ratio)) s.dead_count = s.active - (best + 1);
    return s;
}

Spectrum spectrum(const TensorView& g, const SpectrumOptions& opts) {
    constexpr const char* fn = "deadspec.spectrum";
    detail::check_cpu_float(g, fn, "g");
    DEADSPEC_CHECK_ARG(g.ndim() == 2 && g.shape[0] == g.shape[1], fn,
                       ": g must be a square matrix, got shape ", g.shape_string());
    const auto h = detail::host_matrix(g, 1, fn, "g");
    const auto map = h.map();
    const double scale = map.cwiseAbs().maxCoeff();
    const double asym = detail::max_asymmetry(h.data(), h.rows());
    const double tol = g.dtype == DType::Float32 ? 1e-3 : 1e-6;
    DEADSPEC_CHECK_ARG(asym <= tol * scale, fn, ": g must be symmetric, got max |g - gᵀ| = ",
                       asym, " against max |g| = ", scale);
    const SymEigResult eig = detail::sym_eig_rowmajor(h.data(), h.rows(), opts.vectors, fn);
    if (eig.status != EigStatus::Success)
        throw Error("deadspec.spectrum: the eigensolver did not converge");
    SpectrumOptions o = opts;
    // The default ε follows the data the Gram was built from; a float32 Gram implies float32 data.
    if (g.dtype == DType::Float32 && o.input_dtype == DType::Float64) o.input_dtype = DType::Float32;
    Spectrum s = spectrum_from_eigenvalues(eig.values, o);
    s.status = eig.status;
    if (opts.vectors) s.eigenvectors = eig.vectors;  // already descending, matching the values
    return s;
}

double logdet_top(const Eigen::VectorXd& descending, std::int64_t k) {
    constexpr const char* fn = "deadspec.logdet_top";
    DEADSPEC_CHECK_ARG(k >= 0 && k <= descending.size(), fn, ": k must be in [0, ",
                       descending.size(), "], got ", k);
    double s = 0.0;
    for (std::int64_t i = 0; i < k; ++i) {
        DEADSPEC_CHECK_ARG(i == 0 || descending[i] <= descending[i - 1], fn,
                           ": eigenvalues must be in descending order");
        DEADSPEC_CHECK_ARG(descending[i] > 0.0 && std::isfinite(descending[i]), fn,
                           ": the ", k, " largest eigenvalues must be positive and finite, got ",
                           descending[i], " at index ", i);
        s += std::log(descending[i]);
    }
    return s;
}

}  // namespace deadspec
