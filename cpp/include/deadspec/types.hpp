// SPDX-License-Identifier: Apache-2.0
// TensorView: a non-owning, device-generic view (pointer, dtype, device, shape, strides).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <Eigen/Core>

namespace deadspec {

/// Element types a view can carry. Only Float32 and Float64 are computed on; the others are
/// recognised so that errors can name them.
enum class DType { Float16, BFloat16, Float32, Float64, Int8, Int16, Int32, Int64, UInt8, Bool,
                   Complex64, Complex128, Other };

enum class DeviceType { Cpu, Cuda, Other };

struct Device {
    DeviceType type = DeviceType::Cpu;
    int index = 0;
};

/// Row-major double matrix: the layout the core returns Grams in.
using RowMatrixXd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Name of a dtype as torch prints it ("float32", "int64", ...).
std::string dtype_name(DType dtype);
/// Size in bytes of one element (0 for Other).
int dtype_size(DType dtype);
/// Machine epsilon of a floating dtype (float16: 2^-10, bfloat16: 2^-7); throws for others.
double dtype_eps(DType dtype);
/// "cpu", "cuda:0", ...
std::string device_name(const Device& device);

/// A non-owning view of a strided tensor. Strides are counted in elements, not bytes;
/// an empty `strides` vector means C-contiguous (row-major).
struct TensorView {
    const void* data = nullptr;
    DType dtype = DType::Float64;
    Device device{};
    std::vector<std::int64_t> shape;
    std::vector<std::int64_t> strides;
    /// The producer forbids writes (DLPack's read-only flag); in-place kernels refuse the view.
    bool read_only = false;

    int ndim() const { return static_cast<int>(shape.size()); }
    std::int64_t numel() const;
    /// Stride of dimension `d` in elements (derived from the shape when `strides` is empty).
    std::int64_t stride(int d) const;
    bool is_contiguous() const;
    /// "(3, 4)"
    std::string shape_string() const;

    /// View of a C-contiguous double buffer on the CPU.
    static TensorView cpu(const double* data, std::vector<std::int64_t> shape);
    /// View of a C-contiguous float buffer on the CPU.
    static TensorView cpu(const float* data, std::vector<std::int64_t> shape);
    /// View of an Eigen matrix (either storage order) on the CPU.
    template <typename Derived>
    static TensorView cpu(const Eigen::PlainObjectBase<Derived>& m) {
        using Scalar = typename Derived::Scalar;
        static_assert(std::is_same_v<Scalar, double> || std::is_same_v<Scalar, float>,
                      "TensorView::cpu: only float and double matrices");
        TensorView v;
        v.data = m.data();
        v.dtype = std::is_same_v<Scalar, double> ? DType::Float64 : DType::Float32;
        v.shape = {static_cast<std::int64_t>(m.rows()), static_cast<std::int64_t>(m.cols())};
        if (Derived::IsRowMajor)
            v.strides = {static_cast<std::int64_t>(m.cols()), 1};
        else
            v.strides = {1, static_cast<std::int64_t>(m.rows())};
        return v;
    }
};

}  // namespace deadspec
