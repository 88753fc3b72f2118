// SPDX-License-Identifier: Apache-2.0
// TensorView helpers and the validation/copy path every entry point goes through.
#include <cmath>
#include <cstring>
#include <limits>
#include <sstream>

#include "detail/core.hpp"

namespace deadspec {

std::string dtype_name(DType dtype) {
    switch (dtype) {
        case DType::Float16: return "float16";
        case DType::BFloat16: return "bfloat16";
        case DType::Float32: return "float32";
        case DType::Float64: return "float64";
        case DType::Int8: return "int8";
        case DType::Int16: return "int16";
        case DType::Int32: return "int32";
        case DType::Int64: return "int64";
        case DType::UInt8: return "uint8";
        case DType::Bool: return "bool";
        case DType::Complex64: return "complex64";
        case DType::Complex128: return "complex128";
        default: return "unknown dtype";
    }
}

int dtype_size(DType dtype) {
    switch (dtype) {
        case DType::Bool:
        case DType::Int8:
        case DType::UInt8: return 1;
        case DType::Float16:
        case DType::BFloat16:
        case DType::Int16: return 2;
        case DType::Float32:
        case DType::Int32: return 4;
        case DType::Float64:
        case DType::Int64:
        case DType::Complex64: return 8;
        case DType::Complex128: return 16;
        default: return 0;
    }
}

double dtype_eps(DType dtype) {
    switch (dtype) {
        case DType::Float16: return std::ldexp(1.0, -10);
        case DType::BFloat16: return std::ldexp(1.0, -7);
        case DType::Float32: return static_cast<double>(std::numeric_limits<float>::epsilon());
        case DType::Float64: return std::numeric_limits<double>::epsilon();
        default:
            throw DTypeError("deadspec: machine epsilon is defined for floating dtypes only, got " +
                             dtype_name(dtype));
    }
}

std::string device_name(const Device& device) {
    switch (device.type) {
        case DeviceType::Cpu: return "cpu";
        case DeviceType::Cuda: return "cuda:" + std::to_string(device.index);
        default: return "unknown device";
    }
}

std::int64_t TensorView::numel() const {
    std::int64_t n = 1;
    for (auto s : shape) n *= s;
    return n;
}

std::int64_t TensorView::stride(int d) const {
    if (!strides.empty()) return strides.at(static_cast<std::size_t>(d));
    std::int64_t s = 1;
    for (int i = ndim() - 1; i > d; --i) s *= shape[static_cast<std::size_t>(i)];
    return s;
}

bool TensorView::is_contiguous() const {
    if (strides.empty()) return true;
    std::int64_t expected = 1;
    for (int d = ndim() - 1; d >= 0; --d) {
        const auto sz = shape[static_cast<std::size_t>(d)];
        if (sz != 1 && strides[static_cast<std::size_t>(d)] != expected) return false;
        expected *= sz;
    }
    return true;
}

std::string TensorView::shape_string() const {
    std::ostringstream os;
    os << '(';
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) os << ", ";
        os << shape[i];
    }
    if (shape.size() == 1) os << ',';
    os << ')';
    return os.str();
}

namespace {

// A C-contiguous CPU view of `data` (the TensorView::cpu overloads).
TensorView cpu_view(const void* data, DType dtype, std::vector<std::int64_t> shape) {
    TensorView v;
    v.data = data;
    v.dtype = dtype;
    v.shape = std::move(shape);
    return v;
}

}  // namespace

TensorView TensorView::cpu(const double* data, std::vector<std::int64_t> shape) {
    return cpu_view(data, DType::Float64, std::move(shape));
}

TensorView TensorView::cpu(const float* data, std::vector<std::int64_t> shape) {
    return cpu_view(data, DType::Float32, std::move(shape));
}

namespace detail {

void check_cpu_float(const TensorView& v, const char* fn, const char* arg) {
    if (v.device.type != DeviceType::Cpu)
        throw DeviceError(concat(fn, ": ", arg, " is on ", device_name(v.device),
                                 "; deadspec was built without CUDA support, move the input to "
                                 "the CPU"));
    if (v.dtype != DType::Float32 && v.dtype != DType::Float64)
        throw DTypeError(concat(fn, ": ", arg, " must be float32 or float64, got ",
                                dtype_name(v.dtype)));
    if (!v.strides.empty() && v.strides.size() != v.shape.size())
        throw std::invalid_argument(concat(fn, ": ", arg, " has ", v.strides.size(),
                                           " strides for ", v.shape.size(), " dimensions"));
    for (auto s : v.shape)
        DEADSPEC_CHECK_ARG(s >= 0, fn, ": ", arg, " has a negative dimension, got shape ",
                           v.shape_string());
}

const RowMatrixXd& check_finite_result(const RowMatrixXd& r, const char* fn) {
    if (!r.allFinite())
        throw std::overflow_error(concat(fn, ": the result overflowed float64 (inputs too large; "
                                             "rescale them)"));
    return r;
}

namespace {

template <typename T>
void gather(const TensorView& v, double* out) {
    const T* base = static_cast<const T*>(v.data);
    const int nd = v.ndim();
    if (nd == 0) {
        out[0] = static_cast<double>(base[0]);
        return;
    }
    // Odometer over all but the last dimension; the last is a strided inner loop.
    std::vector<std::int64_t> idx(static_cast<std::size_t>(nd), 0);
    const std::int64_t inner = v.shape.back();
    const std::int64_t inner_stride = v.stride(nd - 1);
    const std::int64_t outer = inner == 0 ? 0 : v.numel() / inner;
    std::int64_t k = 0;
    for (std::int64_t o = 0; o < outer; ++o) {
        std::int64_t off = 0;
        for (int d = 0; d < nd - 1; ++d) off += idx[static_cast<std::size_t>(d)] * v.stride(d);
        const T* p = base + off;
        for (std::int64_t i = 0; i < inner; ++i) out[k++] = static_cast<double>(p[i * inner_stride]);
        for (int d = nd - 2; d >= 0; --d) {
            auto& id = idx[static_cast<std::size_t>(d)];
            if (++id < v.shape[static_cast<std::size_t>(d)]) break;
            id = 0;
        }
    }
}

}  // namespace

HostMatrix host_matrix(const TensorView& v, std::int64_t row_dims, const char* fn,
                       const char* arg) {
    check_cpu_float(v, fn, arg);
    DEADSPEC_CHECK_ARG(v.numel() > 0, fn, ": ", arg, " must not be empty, got shape ",
                       v.shape_string());
    DEADSPEC_CHECK_ARG(v.data != nullptr, fn, ": ", arg, " has a null data pointer");
    HostMatrix h;
    h.m_rows = 1;
    for (std::int64_t d = 0; d < row_dims; ++d) h.m_rows *= v.shape[static_cast<std::size_t>(d)];
    h.m_cols = v.numel() / h.m_rows;
    if (v.dtype == DType::Float64 && v.is_contiguous()) {
        h.m_ptr = static_cast<const double*>(v.data);
    } else if (v.dtype == DType::Float32 && v.is_contiguous()) {
        // The common float32 case: one vectorised conversion instead of the strided loop.
        h.m_owned = Eigen::Map<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic,
                                                   Eigen::RowMajor>>(
                        static_cast<const float*>(v.data), h.m_rows, h.m_cols)
                        .cast<double>();
        h.m_ptr = h.m_owned.data();
    } else {
        h.m_owned.resize(h.m_rows, h.m_cols);
        if (v.dtype == DType::Float64)
            gather<double>(v, h.m_owned.data());
        else
            gather<float>(v, h.m_owned.data());
        h.m_ptr = h.m_owned.data();
    }
    const std::int64_t n = h.m_rows * h.m_cols;
    // First an integer pass the compiler vectorises (an exponent of all ones is Inf or NaN;
    // the branch per element of the search below took a few ms per 2048² matrix), then the
    // search for the index only when there is one.
    std::uint64_t all_ones = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        std::uint64_t bits;
        std::memcpy(&bits, h.m_ptr + i, sizeof bits);
        all_ones |= static_cast<std::uint64_t>(((bits >> 52) & 0x7ff) == 0x7ff);
    }
    if (all_ones == 0) return h;
    for (std::int64_t i = 0; i < n; ++i)
        if (!std::isfinite(h.m_ptr[i]))
            throw std::invalid_argument(concat(fn, ": ", arg, " must be finite, got ",
                                               std::isnan(h.m_ptr[i]) ? "NaN" : "Inf",
                                               " at flat index ", i));
    return h;
}

}  // namespace detail
}  // namespace deadspec
