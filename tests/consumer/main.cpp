// SPDX-License-Identifier: Apache-2.0
// Consumer check: Gram, spectrum and log det⁺ through the installed SDK, against closed forms.
#include <cmath>
#include <cstdio>
#include <vector>

#include <deadspec/deadspec.hpp>

int main() {
    // 4 samples × 3 features; the third feature is twice the first (one structural zero).
    const std::vector<double> x = {1, 0, 2, 0, 1, 0, 1, 1, 2, 2, 1, 4};
    const auto g = deadspec::gram(deadspec::TensorView::cpu(x.data(), {4, 3}));
    // G = XᵀX / 4 computed by hand.
    const double expect[3][3] = {{6.0 / 4, 3.0 / 4, 12.0 / 4},
                                 {3.0 / 4, 3.0 / 4, 6.0 / 4},
                                 {12.0 / 4, 6.0 / 4, 24.0 / 4}};
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
            if (std::abs(g(i, j) - expect[i][j]) > 1e-12) {
                std::printf("FAIL gram(%d,%d) = %g, expected %g\n", i, j, g(i, j), expect[i][j]);
                return 1;
            }
    const auto s = deadspec::spectrum(deadspec::TensorView::cpu(g));
    // The active part is G compressed to the basis u = (e1 + 2e3)/√5, e2:
    // [[uᵀGu, uᵀGe2], [e2ᵀGu, e2ᵀGe2]] = [[30/4, 15/(4√5)], [15/(4√5), 3/4]]; log det⁺ = log det.
    const double a = 30.0 / 4.0, b = 15.0 / (4.0 * std::sqrt(5.0)), c = 3.0 / 4.0;
    const double logdet = std::log(a * c - b * b);
    std::printf("active=%lld structural_zeros=%lld logdet_plus=%.12f expected=%.12f backend=%s\n",
                static_cast<long long>(s.active), static_cast<long long>(s.structural_zeros),
                s.logdet_plus, logdet, deadspec::eig_backend().c_str());
    if (s.active != 2 || s.structural_zeros != 1 || std::abs(s.logdet_plus - logdet) > 1e-10) {
        std::printf("FAIL spectrum\n");
        return 1;
    }
    std::printf("OK deadspec %s\n", DEADSPEC_VERSION_STRING);
    return 0;
}
