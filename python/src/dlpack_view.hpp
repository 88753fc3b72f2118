// SPDX-License-Identifier: Apache-2.0
// DLPackView: consume a DLPack capsule (legacy or versioned) as a deadspec::TensorView (RAII).
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "deadspec/errors.hpp"
#include "deadspec/types.hpp"
#include "dlpack.h"

namespace deadspec::python {

namespace py = pybind11;

/// Takes ownership of a DLPack capsule: renames it "used_dltensor[_versioned]" (so the producer
/// never frees it twice) and calls the producer's deleter on destruction. Must be created and
/// destroyed with the GIL held; the TensorView it exposes may be used without the GIL.
class DLPackView {
public:
    DLPackView(const py::object& obj, const char* fn, const char* arg) {
        if (!py::isinstance<py::capsule>(obj))
            throw py::type_error(std::string(fn) + ": " + arg +
                                 " must be a DLPack capsule, got " +
                                 std::string(py::str(py::type::of(obj).attr("__name__"))));
        auto cap = py::reinterpret_borrow<py::capsule>(obj);
        const char* name = cap.name();
        const std::string nm = name ? name : "";
        DLManagedTensor* legacy = nullptr;
        DLManagedTensorVersioned* versioned = nullptr;
        const DLTensor* t = nullptr;
        if (nm == "dltensor_versioned") {
            versioned = static_cast<DLManagedTensorVersioned*>(cap.get_pointer());
            if (versioned->version.major > 1)
                throw py::buffer_error(std::string(fn) + ": " + arg +
                                       " uses DLPack major version > 1, which deadspec cannot read");
            t = &versioned->dl_tensor;
        } else if (nm == "dltensor") {
            legacy = static_cast<DLManagedTensor*>(cap.get_pointer());
            t = &legacy->dl_tensor;
        } else {
            throw py::type_error(std::string(fn) + ": " + arg +
                                 " must be an unused DLPack capsule, got a capsule named '" + nm +
                                 "'");
        }
        if (t->dtype.lanes != 1)
            throw py::type_error(std::string(fn) + ": " + arg +
                                 " must have scalar elements, got a vector dtype");
        m_view.data = static_cast<const char*>(t->data) + t->byte_offset;
        m_view.device.index = t->device.device_id;
        switch (t->device.device_type) {
            case kDLCPU:
            case kDLCUDAHost: m_view.device.type = DeviceType::Cpu; break;
            case kDLCUDA:
            case kDLCUDAManaged: m_view.device.type = DeviceType::Cuda; break;
            default: m_view.device.type = DeviceType::Other;
        }
        m_view.dtype = map_dtype(t->dtype);
        m_view.shape.assign(t->shape, t->shape + t->ndim);
        if (t->strides != nullptr) m_view.strides.assign(t->strides, t->strides + t->ndim);
        m_view.read_only = versioned && (versioned->flags & DLPACK_FLAG_BITMASK_READ_ONLY);
        // Take ownership last: nothing below can throw, so the deleter always runs exactly once.
        cap.set_name(versioned ? "used_dltensor_versioned" : "used_dltensor");
        m_legacy = legacy;
        m_versioned = versioned;
    }

    ~DLPackView() {
        if (m_versioned && m_versioned->deleter) m_versioned->deleter(m_versioned);
        if (m_legacy && m_legacy->deleter) m_legacy->deleter(m_legacy);
    }

    DLPackView(const DLPackView&) = delete;
    DLPackView& operator=(const DLPackView&) = delete;

    const TensorView& view() const { return m_view; }

private:
    static DType map_dtype(DLDataType d) {
        switch (d.code) {
            case kDLFloat:
                if (d.bits == 16) return DType::Float16;
                if (d.bits == 32) return DType::Float32;
                if (d.bits == 64) return DType::Float64;
                break;
            case kDLBfloat:
                if (d.bits == 16) return DType::BFloat16;
                break;
            case kDLInt:
                if (d.bits == 8) return DType::Int8;
                if (d.bits == 16) return DType::Int16;
                if (d.bits == 32) return DType::Int32;
                if (d.bits == 64) return DType::Int64;
                break;
            case kDLUInt:
                if (d.bits == 8) return DType::UInt8;
                break;
            case kDLBool: return DType::Bool;
            case kDLComplex:
                if (d.bits == 64) return DType::Complex64;
                if (d.bits == 128) return DType::Complex128;
                break;
            default: break;
        }
        return DType::Other;
    }

    TensorView m_view;
    DLManagedTensor* m_legacy = nullptr;
    DLManagedTensorVersioned* m_versioned = nullptr;
};

}  // namespace deadspec::python
