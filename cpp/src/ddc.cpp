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

template <typename T, typename S>
void run(const TensorView& param, const TensorView& grad, const TensorView& m_view,
         const TensorView& v_view, const TensorView& scale, const AdamStep& hp) {
    T* x = static_cast<T*>(const_cast<void*>(param.data));
    T* m = static_cast<T*>(const_cast<void*>(m_view.data));
    T* v = static_cast<T*>(const_cast<void*>(v_view.data));
    const T* g = static_cast<const T*>(grad.data);
    const S* s = static_cast<const S*>(scale.data);
    const std::int64_t rows = param.shape[0];
    const std::int64_t cols = param.ndim() == 2 ? param.shape[1] : 1;
    const std::int64_t gs0 = grad.stride(0), gs1 = param.ndim() == 2 ? grad.stride(1) : 0;
    const std::int64_t ss0 = s ? scale.stride(0) : 0;
    const std::int64_t ss1 = s && param.ndim() == 2 ? scale.stride(1) : 0;
    const double b1 = hp.beta1, b2 = hp.beta2;
    const double bc1 = 1.0 - std::pow(b1, static_cast<double>(hp.step));
    const double bc2_sqrt = std::sqrt(1.0 - std::pow(b2, static_cast<double>(hp.step)));
    const double step_size = hp.lr / bc1;
    for (std::int64_t i = 0; i < rows; ++i) {
        for (std::int64_t j = 0; j < cols; ++j) {
            const std::int64_t k = i * cols + j;
            const double sigma = s ? static_cast<double>(s[i * ss0 + j * ss1]) : 1.0;
            const double gt = static_cast<double>(g[i * gs0 + j * gs1]) * sigma;
            const double mk = b1 * static_cast<double>(m[k]) + (1.0 - b1) * gt;
            const double vk = b2 * static_cast<double>(v[k]) + (1.0 - b2) * gt * gt;
            m[k] = static_cast<T>(mk);
            v[k] = static_cast<T>(vk);
            const double denom = std::sqrt(vk) / bc2_sqrt + hp.eps;
            x[k] = static_cast<T>(static_cast<double>(x[k]) - step_size * (mk / denom) * sigma);
        }
    }
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

}  // namespace deadspec
