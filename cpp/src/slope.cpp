// SPDX-License-Identifier: Apache-2.0
// Ordinary least squares and Theil–Sen line fits.
#include "deadspec/slope.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

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
}  // namespace

SlopeFit fit_slope(const std::vector<double>& x, const std::vector<double>& y, SlopeMethod method) {
    constexpr const char* fn = "deadspec.fit_slope";
    DEADSPEC_CHECK_ARG(x.size() == y.size(), fn, ": y must have as many points as x (", x.size(),
                       "), got ", y.size());
    DEADSPEC_CHECK_ARG(x.size() >= 2, fn, ": x must have at least 2 points, got ", x.size());
    for (std::size_t i = 0; i < x.size(); ++i)
        DEADSPEC_CHECK_ARG(std::isfinite(x[i]) && std::isfinite(y[i]), fn,
                           ": x and y must be finite, got (", x[i], ", ", y[i], ") at index ", i);
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

}  // namespace deadspec
