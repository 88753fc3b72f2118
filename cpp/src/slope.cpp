// SPDX-License-Identifier: Apache-2.0
// Ordinary least squares and Theil–Sen line fits.
#include "deadspec/slope.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "deadspec/errors.hpp"

namespace deadspec {

namespace {
double median(std::vector<double> v) {
    const auto mid = v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2);
    std::nth_element(v.begin(), mid, v.end());
    double m = *mid;
    if (v.size() % 2 == 0) m = 0.5 * (m + *std::max_element(v.begin(), mid));
    return m;
}

// 2^−e with 2^e > max |v| (1 for an all-zero v): the scale the fit works at. A power of two
// scales every sum, product and quotient of the fit exactly, so the fit of the scaled data is
// the scaled fit bit for bit wherever the unscaled one is representable.
int scale_exponent(const std::vector<double>& v) {
    double top = 0.0;
    for (const double a : v) top = std::max(top, std::abs(a));
    int e = 0;
    if (top > 0.0) std::frexp(top, &e);
    return e;
}

std::vector<double> scaled(const std::vector<double>& v, int e) {
    std::vector<double> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = std::ldexp(v[i], -e);
    return out;
}

// The fit of data scaled into (−1, 1): OLS or Theil–Sen, as documented in slope.hpp.
SlopeFit fit_unit(const std::vector<double>& x, const std::vector<double>& y, SlopeMethod method,
                  const char* fn) {
    const auto n = static_cast<double>(x.size());
    double mx = 0, my = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        mx += x[i];
        my += y[i];
    }
    mx /= n;
    my /= n;
    double sxx = 0, sxy = 0, syy = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        sxx += (x[i] - mx) * (x[i] - mx);
        sxy += (x[i] - mx) * (y[i] - my);
        syy += (y[i] - my) * (y[i] - my);
    }
    DEADSPEC_CHECK_ARG(sxx > 0.0, fn, ": x must take at least two distinct values");

    SlopeFit f;
    f.n = static_cast<std::int64_t>(x.size());
    if (method == SlopeMethod::OLS) {
        f.slope = sxy / sxx;
        f.intercept = my - f.slope * mx;
    } else {
        std::vector<double> slopes;
        slopes.reserve(x.size() * (x.size() - 1) / 2);
        for (std::size_t i = 0; i < x.size(); ++i)
            for (std::size_t j = i + 1; j < x.size(); ++j)
                if (x[j] != x[i]) slopes.push_back((y[j] - y[i]) / (x[j] - x[i]));
        f.slope = median(slopes);
        std::vector<double> r(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) r[i] = y[i] - f.slope * x[i];
        f.intercept = median(r);
    }
    double ss_res = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
        const double e = y[i] - (f.intercept + f.slope * x[i]);
        ss_res += e * e;
    }
    f.r2 = syy > 0.0 ? 1.0 - ss_res / syy : 1.0;
    f.std_error = x.size() > 2 ? std::sqrt(ss_res / (n - 2.0) / sxx)
                               : std::numeric_limits<double>::quiet_NaN();
    return f;
}
}  // namespace

SlopeFit fit_slope(const std::vector<double>& x, const std::vector<double>& y, SlopeMethod method) {
    constexpr const char* fn = "deadspec.fit_slope";
    DEADSPEC_CHECK_ARG(x.size() == y.size(), fn, ": y must have as many points as x (", x.size(),
                       "), got ", y.size());
    DEADSPEC_CHECK_ARG(x.size() >= 2, fn, ": x must have at least 2 points, got ", x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
        DEADSPEC_CHECK_ARG(std::isfinite(x[i]) && std::isfinite(y[i]), fn,
                           ": x and y must be finite, got (", x[i], ", ", y[i], ") at index ", i);
    // The fit runs on x·2^−ex and y·2^−ey (both in (−1, 1)), centred: no sum, square or
    // difference can overflow, nor a spread of tiny values underflow to "all x equal", and
    // the readings are mapped back exactly (slope·2^(ey−ex), intercept·2^ey, r² unchanged).
    const int ex = scale_exponent(x), ey = scale_exponent(y);
    SlopeFit f = fit_unit(scaled(x, ex), scaled(y, ey), method, fn);
    f.slope = std::ldexp(f.slope, ey - ex);
    f.intercept = std::ldexp(f.intercept, ey);
    f.std_error = std::ldexp(f.std_error, ey - ex);
    if (!std::isfinite(f.slope) || !std::isfinite(f.intercept) ||
        !(std::isfinite(f.std_error) || std::isnan(f.std_error)))
        throw std::overflow_error(detail::concat(
            fn, ": the fitted line overflows float64 (slope ", f.slope, ", intercept ",
            f.intercept, ", stderr ", f.std_error, "); rescale x or y"));
    return f;
}

}  // namespace deadspec
