// SPDX-License-Identifier: Apache-2.0
// The gauge-fixing scales of DDCAdam: producer row norms and the sums of x⊙g along an axis.
#include "deadspec/ddc.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "detail/core.hpp"
#include "detail/ddc_checks.hpp"
#include "detail/ddc_kernels.hpp"
#include "detail/scaled_sum.hpp"

namespace deadspec {

namespace {

// Element (i, j) of a 2-D float32/float64 view with any strides, as float64.
double at(const TensorView& v, std::int64_t i, std::int64_t j) {
    return detail::element<double>(v, i * v.stride(0) + j * v.stride(1));
}

// Contiguous fast paths: typed pointers and plain loops the compiler vectorises.
// Σ_j (W_ij·c_j)² of R consecutive rows from row i, each with four independent float64 partial
// sums (element j into sum j mod 4, the tail into the first; (s0 + s1) + (s2 + s3)): the sums
// pipeline (a single running sum cannot be reordered without -ffast-math) and R rows give R
// independent chains. Every row's arithmetic is the same whatever R.
template <typename T, int R>
DEADSPEC_ALWAYS_INLINE void rows_sq_part(const T* __restrict w, std::int64_t d, std::int64_t j0,
                                         std::int64_t j1, const double* __restrict c,
                                         double (&s)[R][4]) {
    for (std::int64_t j = j0; j + 4 <= j1; j += 4) {
        for (int k = 0; k < R; ++k) {
            const T* r = w + k * d;
            const double a0 = static_cast<double>(r[j]) * c[j];
            const double a1 = static_cast<double>(r[j + 1]) * c[j + 1];
            const double a2 = static_cast<double>(r[j + 2]) * c[j + 2];
            const double a3 = static_cast<double>(r[j + 3]) * c[j + 3];
            s[k][0] += a0 * a0;
            s[k][1] += a1 * a1;
            s[k][2] += a2 * a2;
            s[k][3] += a3 * a3;
        }
    }
}

template <typename T, int R>
DEADSPEC_ALWAYS_INLINE void rows_sq_loop(const T* __restrict w, std::int64_t d,
                                         const double* __restrict c, double* out) {
    double s[R][4];
    for (int k = 0; k < R; ++k) s[k][0] = s[k][1] = s[k][2] = s[k][3] = 0.0;
    const std::int64_t full = d - d % 4;
    // 64 columns of the R rows at a time, the same columns of the next R rows prefetched: a row
    // is a short stream (one page for 1024 float32s) that the hardware prefetcher does not run
    // ahead of (3 × 1024² float32 from memory, one thread: 0.71 → 0.42 ms)
    constexpr std::int64_t chunk = 64, line = 64 / static_cast<std::int64_t>(sizeof(T));
    for (std::int64_t j0 = 0; j0 < full; j0 += chunk) {
        const std::int64_t j1 = std::min(full, j0 + chunk);
        if (R > 1)
            for (int k = 0; k < R; ++k)
                for (std::int64_t b = j0; b < j1; b += line) __builtin_prefetch(w + (R + k) * d + b);
        rows_sq_part<T, R>(w, d, j0, j1, c, s);
    }
    for (std::int64_t j = full; j < d; ++j)
        for (int k = 0; k < R; ++k) {
            const double a = static_cast<double>(w[k * d + j]) * c[j];
            s[k][0] += a * a;
        }
    for (int k = 0; k < R; ++k) out[k] = (s[k][0] + s[k][1]) + (s[k][2] + s[k][3]);
}

template <typename T, int R>
void rows_sq_base(const T* w, std::int64_t d, const double* c, double* out) {
    rows_sq_loop<T, R>(w, d, c, out);
}

#ifdef DEADSPEC_DDC_AVX2
template <typename T, int R>
__attribute__((target("avx2"))) void rows_sq_avx2(const T* w, std::int64_t d, const double* c,
                                                  double* out) {
    rows_sq_loop<T, R>(w, d, c, out);
}
#endif

template <typename T, int R>
void rows_sq(const T* w, std::int64_t d, const double* c, double* out) {
#ifdef DEADSPEC_DDC_AVX2
    if (detail::has_avx2()) return rows_sq_avx2<T, R>(w, d, c, out);
#endif
    rows_sq_base<T, R>(w, d, c, out);
}

// Σ_j (W_ij·c_j)² of rows [r0, r1) of a C-contiguous W into sq[i − r0], four rows at a time.
template <typename T>
void block_rows_sq(const TensorView& w, std::int64_t r0, std::int64_t r1, std::int64_t d,
                   const double* c, double* sq) {
    const T* base = static_cast<const T*>(w.data);
    std::int64_t i = r0;
    for (; i + 4 <= r1; i += 4) rows_sq<T, 4>(base + i * d, d, c, sq + (i - r0));
    for (; i < r1; ++i) rows_sq<T, 1>(base + i * d, d, c, sq + (i - r0));
}

template <typename T>
void row_dots(const TensorView& x, const TensorView& g, std::int64_t i, std::int64_t d,
              double& s, double& a) {
    using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
    const Eigen::Map<const Vec> px(static_cast<const T*>(x.data) + i * d, d);
    const Eigen::Map<const Vec> pg(static_cast<const T*>(g.data) + i * d, d);
    const auto p = (px.template cast<double>().array() * pg.template cast<double>().array()).eval();
    s = p.sum();
    a = p.abs().sum();
}

template <typename T>
void col_dots(const TensorView& x, const TensorView& g, std::int64_t i, std::int64_t d,
              double* s, double* a) {
    const T* px = static_cast<const T*>(x.data) + i * d;
    const T* pg = static_cast<const T*>(g.data) + i * d;
    for (std::int64_t j = 0; j < d; ++j) {
        const double p = static_cast<double>(px[j]) * static_cast<double>(pg[j]);
        s[j] += p;
        a[j] += std::abs(p);
    }
}

using detail::ScaledSum;
using detail::Term;
using detail::term;

// The norm of row i of [f_w·W·diag(c) | f_b·b] when its plain sum of squares overflowed: the
// terms scaled by 2^-E, E the largest exponent among them (each scaled term is below 1, so their
// squares sum to at most d + 1), and the norm scaled back: +inf exactly when the norm itself
// exceeds float64. The plain result is kept when an input of the row is not finite. Only rows
// whose plain norm is not finite come here: ordinary steps pay one test per row.
double row_norm_scaled(const TensorView& weight, std::int64_t i, const double* c,
                       const std::vector<double>& b, double fw, double fb, double plain) {
    const std::int64_t d = weight.shape[1];
    std::vector<Term> terms;
    terms.reserve(static_cast<std::size_t>(d) + 1);
    for (std::int64_t j = 0; j < d; ++j) {
        const double w = at(weight, i, j);
        if (!std::isfinite(w) || !std::isfinite(c[j])) return plain;
        terms.push_back(term(w, c[j], fw));
    }
    if (!b.empty()) {
        const double bi = b[static_cast<std::size_t>(i)];
        if (!std::isfinite(bi)) return plain;
        terms.push_back(term(bi, 1.0, fb));
    }
    int e = INT_MIN;
    for (const Term& t : terms)
        if (t.m != 0.0) e = std::max(e, t.e);
    if (e == INT_MIN) return 0.0;  // every term is zero
    double sq = 0.0;
    for (const Term& t : terms) {
        const double s = std::ldexp(t.m, t.e - e);  // |s| < 1; negligible terms underflow to 0
        sq += s * s;
    }
    return std::ldexp(std::sqrt(sq), e);  // +inf only if the norm exceeds float64
}

// (Σ x·g, Σ |x·g|) of line k (row k for axis 1, column k for axis 0) when the plain sums were
// not finite: the products as mantissa and exponent (Term), scaled by 2^-E, E the largest
// exponent, summed, and scaled back: ±inf exactly when a sum itself exceeds float64, never the
// NaN of inf - inf. The plain sums are kept when an input of the line is not finite.
void dots_scaled(const TensorView& x, const TensorView& g, int axis, std::int64_t k, double& s,
                 double& a) {
    const std::int64_t n = axis == 1 ? x.shape[1] : x.shape[0];
    ScaledSum ss, sa;
    for (std::int64_t j = 0; j < n; ++j) {
        const double xv = axis == 1 ? at(x, k, j) : at(x, j, k);
        const double gv = axis == 1 ? at(g, k, j) : at(g, j, k);
        if (!std::isfinite(xv) || !std::isfinite(gv)) return;
        const Term t = term(xv, gv);
        ss.add(t);
        sa.add({std::abs(t.m), t.e});
    }
    s = ss.value();
    a = sa.value();
}

}  // namespace

Eigen::VectorXd ddc_row_norms(const TensorView& weight, const TensorView& col_scale,
                              const TensorView& bias, double weight_factor, double bias_factor) {
    constexpr const char* fn = "deadspec.ddc_row_norms";
    detail::check_cpu_float(weight, fn, "weight");
    DEADSPEC_CHECK_ARG(weight.ndim() == 2, fn, ": weight must be 2-D, got shape ",
                       weight.shape_string());
    const std::int64_t h = weight.shape[0], d = weight.shape[1];
    if (col_scale.data) detail::check_vector(col_scale, d, fn, "col_scale");
    if (bias.data) detail::check_vector(bias, h, fn, "bias");
    DEADSPEC_CHECK_ARG(std::isfinite(weight_factor) && std::isfinite(bias_factor), fn,
                       ": weight_factor and bias_factor must be finite, got ", weight_factor,
                       " and ", bias_factor);
    Eigen::VectorXd c = Eigen::VectorXd::Ones(d);
    if (col_scale.data)
        for (std::int64_t j = 0; j < d; ++j)
            c[j] = detail::element<double>(col_scale, j * col_scale.stride(0));
    const std::vector<double> b = detail::read_vector<double>(bias);  // empty for no bias
    Eigen::VectorXd out(h);
    detail::parallel_rows(h, detail::worker_threads(h * d, detail::kParallelElements, h),
                          [&](std::int64_t r0, std::int64_t r1) {
                              detail::row_norms_range(weight, c.data(), b, weight_factor,
                                                      bias_factor, r0, r1, out.data() + r0);
                          });
    return out;
}

namespace detail {

void row_norms_range(const TensorView& weight, const double* c, const std::vector<double>& b,
                     double fw, double fb, std::int64_t r0, std::int64_t r1, double* out) {
    const std::int64_t d = weight.shape[1];
    const double fw2 = fw * fw, fb2 = fb * fb;
    if (weight.is_contiguous()) {
        if (weight.dtype == DType::Float64)
            block_rows_sq<double>(weight, r0, r1, d, c, out);
        else
            block_rows_sq<float>(weight, r0, r1, d, c, out);
    } else {
        for (std::int64_t i = r0; i < r1; ++i) {
            double sq = 0.0;
            for (std::int64_t j = 0; j < d; ++j) {
                const double w = at(weight, i, j) * c[j];
                sq += w * w;
            }
            out[i - r0] = sq;
        }
    }
    for (std::int64_t i = r0; i < r1; ++i) {
        double sq = out[i - r0] * fw2;
        if (!b.empty()) {
            const double bi = b[static_cast<std::size_t>(i)];
            sq += fb2 * (bi * bi);
        }
        double norm = std::sqrt(sq);
        if (!std::isfinite(norm))  // overflowed (or not finite)
            norm = row_norm_scaled(weight, i, c, b, fw, fb, norm);
        out[i - r0] = norm;
    }
}

}  // namespace detail

std::pair<Eigen::VectorXd, Eigen::VectorXd> ddc_gauge_dots(const TensorView& x,
                                                           const TensorView& g, int axis) {
    constexpr const char* fn = "deadspec.ddc_gauge_dots";
    detail::check_cpu_float(x, fn, "x");
    detail::check_cpu_float(g, fn, "g");
    DEADSPEC_CHECK_ARG(x.ndim() == 2, fn, ": x must be 2-D, got shape ", x.shape_string());
    DEADSPEC_CHECK_ARG(g.shape == x.shape, fn, ": g must have the shape of x ", x.shape_string(),
                       ", got ", g.shape_string());
    DEADSPEC_CHECK_ARG(axis == 0 || axis == 1, fn, ": axis must be 0 or 1, got ", axis);
    const std::int64_t h = x.shape[0], d = x.shape[1];
    const bool fast = x.is_contiguous() && g.is_contiguous() && x.dtype == g.dtype;
    if (axis == 1) {
        Eigen::VectorXd s = Eigen::VectorXd::Zero(h), a = Eigen::VectorXd::Zero(h);
        detail::parallel_rows(h, detail::worker_threads(h * d, detail::kParallelElements, h),
                              [&](std::int64_t r0, std::int64_t r1) {
                                  for (std::int64_t i = r0; i < r1; ++i) {
                                      if (fast) {
                                          if (x.dtype == DType::Float64)
                                              row_dots<double>(x, g, i, d, s[i], a[i]);
                                          else
                                              row_dots<float>(x, g, i, d, s[i], a[i]);
                                          continue;
                                      }
                                      double si = 0.0, ai = 0.0;
                                      for (std::int64_t j = 0; j < d; ++j) {
                                          const double p = at(x, i, j) * at(g, i, j);
                                          si += p;
                                          ai += std::abs(p);
                                      }
                                      s[i] = si;
                                      a[i] = ai;
                                  }
                                  for (std::int64_t i = r0; i < r1; ++i)
                                      if (!std::isfinite(s[i]) || !std::isfinite(a[i]))
                                          dots_scaled(x, g, 1, i, s[i], a[i]);
                              });
        return {s, a};
    }
    // Column sums: each thread owns a range of rows and its own partial sums (summed after, in
    // thread order, so the result does not depend on scheduling).
    const int threads = detail::worker_threads(h * d, detail::kParallelElements, h);
    std::vector<Eigen::VectorXd> ps(static_cast<std::size_t>(threads), Eigen::VectorXd::Zero(d));
    std::vector<Eigen::VectorXd> pa(ps);
    const std::int64_t chunk = (h + threads - 1) / threads;
    detail::parallel_rows(h, threads, [&](std::int64_t r0, std::int64_t r1) {
        const auto t = static_cast<std::size_t>(r0 / std::max<std::int64_t>(chunk, 1));
        for (std::int64_t i = r0; i < r1; ++i) {
            if (fast) {
                if (x.dtype == DType::Float64)
                    col_dots<double>(x, g, i, d, ps[t].data(), pa[t].data());
                else
                    col_dots<float>(x, g, i, d, ps[t].data(), pa[t].data());
                continue;
            }
            for (std::int64_t j = 0; j < d; ++j) {
                const double p = at(x, i, j) * at(g, i, j);
                ps[t][j] += p;
                pa[t][j] += std::abs(p);
            }
        }
    });
    Eigen::VectorXd s = Eigen::VectorXd::Zero(d), a = Eigen::VectorXd::Zero(d);
    for (std::size_t t = 0; t < ps.size(); ++t) {
        s += ps[t];
        a += pa[t];
    }
    for (std::int64_t j = 0; j < d; ++j)  // overflowed columns, summed again scaled
        if (!std::isfinite(s[j]) || !std::isfinite(a[j])) dots_scaled(x, g, 0, j, s[j], a[j]);
    return {s, a};
}

}  // namespace deadspec
