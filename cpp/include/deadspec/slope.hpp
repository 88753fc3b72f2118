// SPDX-License-Identifier: Apache-2.0
// Straight-line fits y ≈ intercept + slope·x (log–log slopes of the DDS readings).
#pragma once

#include <cstdint>
#include <vector>

namespace deadspec {

enum class SlopeMethod {
    OLS,       ///< ordinary least squares with intercept
    TheilSen,  ///< median of pairwise slopes; intercept = median(y − slope·x)
};

struct SlopeFit {
    double slope = 0.0;
    double intercept = 0.0;
    double r2 = 0.0;         ///< 1 − SS_res / SS_tot of the fitted line (1 if SS_tot = 0)
    double std_error = 0.0;  ///< OLS standard error of the slope, √(SS_res/(n−2) / S_xx);
                             ///< NaN when n = 2. Theil–Sen reports the same residual formula.
    std::int64_t n = 0;
};

/// Fit a line through (x_i, y_i).
///
/// Scale-invariant: the fit runs on x and y scaled by powers of two into (−1, 1) and centred,
/// and its readings are mapped back exactly, so any finite data (values near 1e±300 included)
/// give the fit they would in exact-range arithmetic: the same bits where the plain formulas
/// are representable, finite readings where their sums would overflow or underflow.
/// \throws std::invalid_argument if sizes differ, n < 2, a value is NaN/Inf, or all x are equal.
/// \throws std::overflow_error if the slope, intercept or standard error is beyond float64
///         (e.g. y ~ 1e300 against x ~ 1e−300).
SlopeFit fit_slope(const std::vector<double>& x, const std::vector<double>& y,
                   SlopeMethod method = SlopeMethod::OLS);

}  // namespace deadspec
