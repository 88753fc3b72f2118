// SPDX-License-Identifier: Apache-2.0
// Sums of products that stay exact in range: each product as a mantissa and an exponent, summed
// scaled by 2^-E (E the largest exponent so far) and scaled back at the end. The result is ±inf
// exactly when the sum itself exceeds float64, never the NaN of inf - inf, and never an
// intermediate overflow or underflow of a product. For the rare lines whose plain float64 sums
// were not finite: ordinary inputs never come here.
#pragma once

#include <climits>
#include <cmath>

namespace deadspec::detail {

// One product a·b·f as mantissa (|m| in [1/8, 1) or 0) and exponent: no product formed.
struct Term {
    double m;
    int e;
};

inline Term term(double a, double b, double f = 1.0) {
    int ea = 0, eb = 0, ef = 0;
    const double m = std::frexp(a, &ea) * std::frexp(b, &eb) * std::frexp(f, &ef);
    return {m, ea + eb + ef};
}

// A running sum of Terms, rescaled when a larger exponent arrives (|s| stays below the count).
class ScaledSum {
public:
    void add(Term t) {
        if (t.m == 0.0) return;
        if (m_e == INT_MIN || t.e > m_e) {
            m_s = m_e == INT_MIN ? 0.0 : std::ldexp(m_s, m_e - t.e);
            m_e = t.e;
        }
        m_s += std::ldexp(t.m, t.e - m_e);  // negligible terms underflow to 0
    }
    double value() const { return m_e == INT_MIN ? 0.0 : std::ldexp(m_s, m_e); }

private:
    double m_s = 0.0;
    int m_e = INT_MIN;
};

}  // namespace deadspec::detail
