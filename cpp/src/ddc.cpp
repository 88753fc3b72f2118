// SPDX-License-Identifier: Apache-2.0
// The fused DDCAdam block step: one pass reading x, g, σ, m, v and writing x, m, v.
#include "deadspec/ddc.hpp"

#include <cmath>

#include "detail.hpp"

namespace deadspec {

namespace {

constexpr const char* kFn = "deadspec.ddc_adam_update";

void check_same_layout(const TensorView& ref, const TensorView& v, const char* arg,
                       bool writable) {
    detail::check_cpu_float(v, kFn, arg);
    DEADSPEC_CHECK_ARG(v.shape == ref.shape, kFn, ": ", arg, " must have the shape of param ",
                       ref.shape_string(), ", got ", v.shape_string());
    DEADSPEC_CHECK_ARG(v.dtype == ref.dtype, kFn, ": ", arg, " must have param's dtype ",
                       dtype_name(ref.dtype), ", got ", dtype_name(v.dtype));
    if (writable) {
        DEADSPEC_CHECK_ARG(v.is_contiguous(), kFn, ": ", arg, " must be C-contiguous");
        DEADSPEC_CHECK_ARG(!v.read_only, kFn, ": ", arg, " must be writable, got a read-only tensor");
        DEADSPEC_CHECK_ARG(v.data != nullptr || v.numel() == 0, kFn, ": ", arg,
                           " has a null data pointer");
    }
}

// σ for element (i, j): a row vector broadcast along j, a column vector broadcast along i, a
// full strided matrix, or 1. Resolved once per block so the inner loop stays simple.
enum class ScaleKind { None, Row, Col, Full };

template <typename T, typename S, ScaleKind K>
void run_rows(T* x, T* m, T* v, const T* g, std::int64_t gs0, std::int64_t gs1, const S* s,
              std::int64_t ss0, std::int64_t ss1, std::int64_t r0, std::int64_t r1,
              std::int64_t cols, T b1, T b2, T inv_bc2_sqrt, T step_size, T eps) {
    const T one = T(1);
    for (std::int64_t i = r0; i < r1; ++i) {
        T* xi = x + i * cols;
        T* mi = m + i * cols;
        T* vi = v + i * cols;
        const T* gi = g + i * gs0;
        const T row_sigma = K == ScaleKind::Row ? static_cast<T>(s[i * ss0]) : one;
        for (std::int64_t j = 0; j < cols; ++j) {
            T sigma = one;
            if constexpr (K == ScaleKind::Row) sigma = row_sigma;
            if constexpr (K == ScaleKind::Col) sigma = static_cast<T>(s[j * ss1]);
            if constexpr (K == ScaleKind::Full) sigma = static_cast<T>(s[i * ss0 + j * ss1]);
            const T gt = gi[j * gs1] * sigma;
            const T mk = b1 * mi[j] + (one - b1) * gt;
            const T vk = b2 * vi[j] + (one - b2) * gt * gt;
            mi[j] = mk;
            vi[j] = vk;
            xi[j] -= step_size * (mk / (std::sqrt(vk) * inv_bc2_sqrt + eps)) * sigma;
        }
    }
}

// Blocks above this many elements are split over threads by rows (each row is independent).
constexpr std::int64_t kParallelElements = std::int64_t(1) << 18;

template <typename T, typename S>
void run(const TensorView& param, const TensorView& grad, const TensorView& m_view,
         const TensorView& v_view, const TensorView& scale, const AdamStep& hp) {
    T* x = static_cast<T*>(const_cast<void*>(param.data));
    T* m = static_cast<T*>(const_cast<void*>(m_view.data));
    T* v = static_cast<T*>(const_cast<void*>(v_view.data));
    const T* g = static_cast<const T*>(grad.data);
    const S* s = static_cast<const S*>(scale.data);
    const bool two_d = param.ndim() == 2;
    const std::int64_t rows = param.shape[0];
    const std::int64_t cols = two_d ? param.shape[1] : 1;
    const std::int64_t gs0 = grad.stride(0), gs1 = two_d ? grad.stride(1) : 1;
    const std::int64_t ss0 = s ? scale.stride(0) : 0;
    const std::int64_t ss1 = s && two_d ? scale.stride(1) : 0;
    ScaleKind kind = ScaleKind::None;
    if (s) kind = !two_d || ss1 == 0 ? ScaleKind::Row : (ss0 == 0 ? ScaleKind::Col : ScaleKind::Full);
    // Bias corrections in float64, the per-element arithmetic in the parameter's dtype (as
    // torch's Adam does).
    const double bc1 = 1.0 - std::pow(hp.beta1, static_cast<double>(hp.step));
    const double bc2 = 1.0 - std::pow(hp.beta2, static_cast<double>(hp.step));
    const T b1 = static_cast<T>(hp.beta1), b2 = static_cast<T>(hp.beta2);
    const T inv_bc2_sqrt = static_cast<T>(1.0 / std::sqrt(bc2));
    const T step_size = static_cast<T>(hp.lr / bc1), eps = static_cast<T>(hp.eps);

    auto work = [&](std::int64_t r0, std::int64_t r1) {
        switch (kind) {
            case ScaleKind::None:
                run_rows<T, S, ScaleKind::None>(x, m, v, g, gs0, gs1, s, ss0, ss1, r0, r1, cols,
                                                b1, b2, inv_bc2_sqrt, step_size, eps);
                break;
            case ScaleKind::Row:
                run_rows<T, S, ScaleKind::Row>(x, m, v, g, gs0, gs1, s, ss0, ss1, r0, r1, cols,
                                               b1, b2, inv_bc2_sqrt, step_size, eps);
                break;
            case ScaleKind::Col:
                run_rows<T, S, ScaleKind::Col>(x, m, v, g, gs0, gs1, s, ss0, ss1, r0, r1, cols,
                                               b1, b2, inv_bc2_sqrt, step_size, eps);
                break;
            case ScaleKind::Full:
                run_rows<T, S, ScaleKind::Full>(x, m, v, g, gs0, gs1, s, ss0, ss1, r0, r1, cols,
                                                b1, b2, inv_bc2_sqrt, step_size, eps);
                break;
        }
    };
    // A 1-D block is one "row" per element: split it as cols = 1 rows.
    const int threads = detail::worker_threads(rows * cols, kParallelElements, rows);
    detail::parallel_rows(rows, threads, work);
}

template <typename T>
void dispatch_scale(const TensorView& p, const TensorView& g, const TensorView& m,
                    const TensorView& v, const TensorView& s, const AdamStep& hp) {
    if (s.data == nullptr || s.dtype == DType::Float64)
        run<T, double>(p, g, m, v, s, hp);
    else
        run<T, float>(p, g, m, v, s, hp);
}

}  // namespace

void ddc_adam_update(const TensorView& param, const TensorView& grad, const TensorView& exp_avg,
                     const TensorView& exp_avg_sq, const TensorView& scale, const AdamStep& hp) {
    detail::check_cpu_float(param, kFn, "param");
    DEADSPEC_CHECK_ARG(param.ndim() == 1 || param.ndim() == 2, kFn,
                       ": param must be 1-D or 2-D, got shape ", param.shape_string());
    check_same_layout(param, param, "param", true);
    check_same_layout(param, grad, "grad", false);
    check_same_layout(param, exp_avg, "exp_avg", true);
    check_same_layout(param, exp_avg_sq, "exp_avg_sq", true);
    if (scale.data != nullptr) {
        detail::check_cpu_float(scale, kFn, "scale");
        DEADSPEC_CHECK_ARG(scale.shape == param.shape, kFn,
                           ": scale must be broadcast to param's shape ", param.shape_string(),
                           ", got ", scale.shape_string());
    }
    DEADSPEC_CHECK_ARG(hp.step >= 1, kFn, ": step must be >= 1, got ", hp.step);
    DEADSPEC_CHECK_ARG(hp.lr >= 0.0 && std::isfinite(hp.lr), kFn, ": lr must be finite and >= 0, got ", hp.lr);
    DEADSPEC_CHECK_ARG(hp.beta1 >= 0.0 && hp.beta1 < 1.0 && hp.beta2 >= 0.0 && hp.beta2 < 1.0, kFn,
                       ": betas must be in [0, 1), got (", hp.beta1, ", ", hp.beta2, ")");
    DEADSPEC_CHECK_ARG(hp.eps > 0.0, kFn, ": eps must be > 0, got ", hp.eps);
    if (param.numel() == 0) return;
    if (param.dtype == DType::Float64)
        dispatch_scale<double>(param, grad, exp_avg, exp_avg_sq, scale, hp);
    else
        dispatch_scale<float>(param, grad, exp_avg, exp_avg_sq, scale, hp);
}

namespace {

template <typename T>
double at2(const TensorView& v, std::int64_t i, std::int64_t j) {
    return static_cast<double>(static_cast<const T*>(v.data)[i * v.stride(0) + j * v.stride(1)]);
}

double at(const TensorView& v, std::int64_t i, std::int64_t j) {
    return v.dtype == DType::Float64 ? at2<double>(v, i, j) : at2<float>(v, i, j);
}

double at1(const TensorView& v, std::int64_t i) {
    return v.dtype == DType::Float64
               ? static_cast<const double*>(v.data)[i * v.stride(0)]
               : static_cast<double>(static_cast<const float*>(v.data)[i * v.stride(0)]);
}

// Contiguous fast paths: typed pointers and plain loops the compiler vectorises.
template <typename T>
double row_sq(const TensorView& w, std::int64_t i, std::int64_t d, const double* c) {
    // Eigen's reductions are explicitly vectorised (a plain loop's float sum is not, without
    // -ffast-math).
    const Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>> row(
        static_cast<const T*>(w.data) + i * d, d);
    const Eigen::Map<const Eigen::VectorXd> cv(c, d);
    return row.template cast<double>().cwiseProduct(cv).squaredNorm();
}

template <typename T>
void row_dots(const TensorView& x, const TensorView& g, std::int64_t i, std::int64_t d,
              double& s, double& a) {
    const T* px = static_cast<const T*>(x.data) + i * d;
    const T* pg = static_cast<const T*>(g.data) + i * d;
    double si = 0.0, ai = 0.0;
    for (std::int64_t j = 0; j < d; ++j) {
        const double p = static_cast<double>(px[j]) * static_cast<double>(pg[j]);
        si += p;
        ai += std::abs(p);
    }
    s = si;
    a = ai;
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

void check_vector(const TensorView& v, std::int64_t n, const char* fn, const char* arg) {
    detail::check_cpu_float(v, fn, arg);
    DEADSPEC_CHECK_ARG(v.ndim() == 1 && v.shape[0] == n, fn, ": ", arg, " must have shape (", n,
                       ",), got ", v.shape_string());
}

}  // namespace

Eigen::VectorXd ddc_row_norms(const TensorView& weight, const TensorView& col_scale,
                              const TensorView& bias) {
    constexpr const char* fn = "deadspec.ddc_row_norms";
    detail::check_cpu_float(weight, fn, "weight");
    DEADSPEC_CHECK_ARG(weight.ndim() == 2, fn, ": weight must be 2-D, got shape ",
                       weight.shape_string());
    const std::int64_t h = weight.shape[0], d = weight.shape[1];
    if (col_scale.data) check_vector(col_scale, d, fn, "col_scale");
    if (bias.data) check_vector(bias, h, fn, "bias");
    Eigen::VectorXd c = Eigen::VectorXd::Ones(d);
    if (col_scale.data)
        for (std::int64_t j = 0; j < d; ++j) c[j] = at1(col_scale, j);
    Eigen::VectorXd out(h);
    detail::parallel_rows(h, detail::worker_threads(h * d, kParallelElements, h),
                          [&](std::int64_t r0, std::int64_t r1) {
                              for (std::int64_t i = r0; i < r1; ++i) {
                                  double sq = 0.0;
                                  if (weight.is_contiguous())
                                      sq = weight.dtype == DType::Float64
                                               ? row_sq<double>(weight, i, d, c.data())
                                               : row_sq<float>(weight, i, d, c.data());
                                  else
                                      for (std::int64_t j = 0; j < d; ++j) {
                                          const double w = at(weight, i, j) * c[j];
                                          sq += w * w;
                                      }
                                  if (bias.data) {
                                      const double b = at1(bias, i);
                                      sq += b * b;
                                  }
                                  out[i] = std::sqrt(sq);
                              }
                          });
    return out;
}

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
        detail::parallel_rows(h, detail::worker_threads(h * d, kParallelElements, h),
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
                              });
        return {s, a};
    }
    // Column sums: each thread owns a range of rows and its own partial sums (summed after, in
    // thread order, so the result does not depend on scheduling).
    const int threads = detail::worker_threads(h * d, kParallelElements, h);
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
    return {s, a};
}

}  // namespace deadspec
