// SPDX-License-Identifier: Apache-2.0
// The split form's per-unit step and the sums of its items' column sums (detail/split_rows.hpp):
// one arithmetic for the per-block path (ddc_split.cpp, ddc_split_units) and the bound plan
// (ddc_split_plan.cpp).
#include <algorithm>
#include <cmath>
#include <limits>

#include "detail/split_rows.hpp"

namespace deadspec::detail {

void split_sum_parts(const std::vector<double>& parts, std::size_t n_items, std::int64_t cols,
                     double* out) {
    const auto n = static_cast<std::size_t>(cols);
    std::fill(out, out + n, 0.0);
    for (std::size_t k = 0; k < n_items; ++k) {
        const double* p = parts.data() + k * n;
        for (std::size_t j = 0; j < n; ++j) out[j] += p[j];
    }
}

template <typename T>
std::int64_t split_units(const SplitUnits<T>& u, std::int64_t h, std::int64_t step, double beta1,
                         double beta2, double eps) {
    const T half = T(0.5), tiny = std::numeric_limits<T>::min(), zero = T(0), one = T(1);
    const T r2 = static_cast<T>(std::sqrt(2.0));
    const T w1 = static_cast<T>(1.0 - beta1), b2 = static_cast<T>(beta2);
    const T w2 = static_cast<T>(1.0 - beta2), e = static_cast<T>(eps);
    const T bc1 = static_cast<T>(1.0 - std::pow(beta1, static_cast<double>(step)));
    const T bc2 = static_cast<T>(1.0 - std::pow(beta2, static_cast<double>(step)));
    std::int64_t refused = 0;
    for (std::int64_t k = 0; k < h; ++k) {
        // a live unit has a unit-norm x̃ row (a dead row, ρ = 0 → ρ := 1, has q ≈ 0)
        const bool live = u.q[k] > half && (u.gauged == nullptr || u.gauged[k] != 0);
        const T n2 = live && u.n2[k] > tiny ? u.n2[k] : zero;
        const T n2s = n2 > zero ? n2 : one;
        const T q = live ? u.q[k] : one;
        const T gu = live ? (u.g_in[k] + u.g_out[k]) / r2 : zero;
        // the radial Adam, checked before commit (torch's lerp: the weight (1 − β₁) is < ½ or not)
        const T m = u.m[k], v = u.v[k];
        const T mk = w1 < half ? m + w1 * (gu - m) : gu - (gu - m) * (one - w1);
        const T vk = v * b2 + (w2 * gu) * gu;
        if (std::isfinite(mk) && std::isfinite(vk)) {
            u.m[k] = mk;
            u.v[k] = vk;
        } else {
            ++refused;
        }
        const T den = std::sqrt(u.v[k] / bc2) + e;
        const T dir = den > zero ? -(u.m[k] / bc1) / den : zero;
        u.live[k] = live ? one : zero;
        u.qs[k] = q;
        u.n2m[k] = n2;
        u.n2s[k] = n2s;
        u.radial[k] = live ? dir / r2 : zero;
        u.grad_row[k] = live ? u.g_in[k] / q : zero;
        u.grad_col[k] = n2 > zero ? u.g_only[k] / n2s : zero;
        u.col_norm[k] = n2 > zero ? std::sqrt(n2) : one;
    }
    return refused;
}

template std::int64_t split_units<float>(const SplitUnits<float>&, std::int64_t, std::int64_t,
                                         double, double, double);
template std::int64_t split_units<double>(const SplitUnits<double>&, std::int64_t,
                                          std::int64_t, double, double, double);

}  // namespace deadspec::detail
