// SPDX-License-Identifier: Apache-2.0
// Validation shared by the DDC sources: a fused DDCAdam block (the split form checks its common
// part the same way) and the vector arguments of the row norms and the split form.
#pragma once

#include <cmath>
#include <cstdint>

#include "core.hpp"
#include "deadspec/ddc.hpp"
#include "deadspec/errors.hpp"
#include "deadspec/types.hpp"

namespace deadspec::detail {

constexpr const char* kAdamFn = "deadspec.ddc_adam_update";

// `v` has param's (`ref`'s) shape and dtype; a written one is also C-contiguous and writable.
inline void check_same_layout(const TensorView& ref, const TensorView& v, const char* arg,
                              bool writable, const char* fn = kAdamFn) {
    check_cpu_float(v, fn, arg);
    DEADSPEC_CHECK_ARG(v.shape == ref.shape, fn, ": ", arg, " must have the shape of param ",
                       ref.shape_string(), ", got ", v.shape_string());
    DEADSPEC_CHECK_ARG(v.dtype == ref.dtype, fn, ": ", arg, " must have param's dtype ",
                       dtype_name(ref.dtype), ", got ", dtype_name(v.dtype));
    if (writable) {
        // (an empty tensor is never written, whatever strides its producer gave it)
        DEADSPEC_CHECK_ARG(v.numel() == 0 || v.is_contiguous(), fn, ": ", arg,
                           " must be C-contiguous");
        DEADSPEC_CHECK_ARG(!v.read_only, fn, ": ", arg, " must be writable, got a read-only tensor");
        DEADSPEC_CHECK_ARG(v.data != nullptr || v.numel() == 0, fn, ": ", arg,
                           " has a null data pointer");
    }
}

// Everything ddc_adam_update documents as an error, before anything is written. `fn` names the
// caller in messages (the split form checks its tensors, rotations and hyper-parameters here).
inline void check_adam_block(const AdamBlock& b, const char* fn = kAdamFn) {
    const TensorView& param = b.param;
    check_cpu_float(param, fn, "param");
    DEADSPEC_CHECK_ARG(param.ndim() == 1 || param.ndim() == 2, fn,
                       ": param must be 1-D or 2-D, got shape ", param.shape_string());
    check_same_layout(param, param, "param", true, fn);
    check_same_layout(param, b.grad, "grad", false, fn);
    check_same_layout(param, b.exp_avg, "exp_avg", true, fn);
    check_same_layout(param, b.exp_avg_sq, "exp_avg_sq", true, fn);
    if (b.scale.data != nullptr) {
        check_cpu_float(b.scale, fn, "scale");
        DEADSPEC_CHECK_ARG(b.scale.shape == param.shape, fn,
                           ": scale must be broadcast to param's shape ", param.shape_string(),
                           ", got ", b.scale.shape_string());
    }
    if (b.col_scale.data != nullptr) {
        check_cpu_float(b.col_scale, fn, "col_scale");
        DEADSPEC_CHECK_ARG(param.ndim() == 2 && b.col_scale.ndim() == 1 &&
                               b.col_scale.shape[0] == param.shape[1],
                           fn, ": col_scale must be a vector with one entry per column of a 2-D "
                           "param, got ", b.col_scale.shape_string(), " for param ",
                           param.shape_string());
    }
    if (b.rot_axis >= 0 || !b.rot_segments.empty()) {
        DEADSPEC_CHECK_ARG(b.rot_axis == 0 || (b.rot_axis == 1 && param.ndim() == 2), fn,
                           ": rot_axis must be 0, or 1 for a 2-D param, got ", b.rot_axis);
        const std::int64_t len = param.ndim() == 2 ? param.shape[static_cast<std::size_t>(b.rot_axis)]
                                                   : param.shape[0];
        std::int64_t at = 0;
        for (const auto& [a, e] : b.rot_segments) {
            DEADSPEC_CHECK_ARG(a >= at && e > a && e <= len, fn,
                               ": rot_segments must be ascending, disjoint, non-empty ranges "
                               "within [0, ", len, "), got [", a, ", ", e, ")");
            at = e;
        }
        if (param.ndim() == 1) {
            DEADSPEC_CHECK_ARG(b.scale.data == nullptr, fn,
                               ": a rotated 1-D param must have σ = 1 (no scale)");
        }
        if (b.rot_axis == 0 && param.ndim() == 2) {
            DEADSPEC_CHECK_ARG(b.scale.data == nullptr || b.scale.stride(0) == 0, fn,
                               ": σ must be constant along rotated rows (a column scale only)");
        }
        if (b.rot_axis == 1) {
            DEADSPEC_CHECK_ARG(b.col_scale.data == nullptr &&
                                   (b.scale.data == nullptr || b.scale.stride(1) == 0),
                               fn, ": σ must be constant along rotated columns (a row scale only)");
        }
    }
    const AdamStep& hp = b.hp;
    DEADSPEC_CHECK_ARG(hp.step >= 1, fn, ": step must be >= 1, got ", hp.step);
    DEADSPEC_CHECK_ARG(hp.lr >= 0.0 && std::isfinite(hp.lr), fn, ": lr must be finite and >= 0, got ", hp.lr);
    DEADSPEC_CHECK_ARG(hp.beta1 >= 0.0 && hp.beta1 < 1.0 && hp.beta2 >= 0.0 && hp.beta2 < 1.0, fn,
                       ": betas must be in [0, 1), got (", hp.beta1, ", ", hp.beta2, ")");
    // eps = 0 and a negative decay (lr·wd > 1) are accepted, as torch's AdamW accepts them.
    DEADSPEC_CHECK_ARG(hp.eps >= 0.0, fn, ": eps must be >= 0, got ", hp.eps);
    DEADSPEC_CHECK_ARG(std::isfinite(hp.decay), fn, ": decay must be finite, got ", hp.decay);
}

// `v` is a CPU float32/float64 vector of n entries (any stride).
inline void check_vector(const TensorView& v, std::int64_t n, const char* fn, const char* arg) {
    check_cpu_float(v, fn, arg);
    DEADSPEC_CHECK_ARG(v.ndim() == 1 && v.shape[0] == n, fn, ": ", arg, " must have shape (", n,
                       ",), got ", v.shape_string());
}

}  // namespace deadspec::detail
