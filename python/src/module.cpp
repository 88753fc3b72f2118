// SPDX-License-Identifier: Apache-2.0
// deadspec._core: module definition, exception mapping, build information.
#include <pybind11/pybind11.h>

#include <Eigen/Core>

#include "bindings.hpp"
#include "dlpack_view.hpp"
#include "deadspec/config.hpp"
#include "deadspec/errors.hpp"
#include "deadspec/sym_eig.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
    m.doc() = "deadspec._core: the C++ core of deadspec (private; use the deadspec package).";
    m.attr("__version__") = DEADSPEC_VERSION_STRING;

    static py::exception<deadspec::Error> error(m, "Error", PyExc_RuntimeError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const deadspec::DTypeError& e) {
            PyErr_SetString(PyExc_TypeError, e.what());
        } catch (const deadspec::Error& e) {
            py::set_error(error, e.what());
        }
    });

    m.def("build_info", [] {
        py::dict d;
        d["version"] = DEADSPEC_VERSION_STRING;
        d["cuda"] = static_cast<bool>(DEADSPEC_WITH_CUDA);
        d["lapack"] = DEADSPEC_LAPACK_BACKEND;
        d["eig_backend"] = deadspec::eig_backend();
        d["blas_info"] = deadspec::blas_info();
        d["num_threads"] = deadspec::num_threads();
        d["eigen_version"] = std::to_string(EIGEN_WORLD_VERSION) + "." +
                             std::to_string(EIGEN_MAJOR_VERSION) + "." +
                             std::to_string(EIGEN_MINOR_VERSION);
        return d;
    }, "Build flavour of the core: version, CUDA, LAPACK backend, Eigen version.");

    m.def(
        "dlpack_data_ptr",
        [](const py::object& capsule) {
            deadspec::python::DLPackView v(capsule, "deadspec.dlpack_data_ptr", "x");
            return reinterpret_cast<std::uintptr_t>(v.view().data);
        },
        py::arg("x"),
        "Address the core reads from for this DLPack capsule (consumes it; for zero-copy tests).");

    deadspec::python::bind_gram(m);
    deadspec::python::bind_fisher(m);
    deadspec::python::bind_spectrum(m);
    deadspec::python::bind_slope(m);
    deadspec::python::bind_ddc(m);
    deadspec::python::bind_ddc_plan(m);
    deadspec::python::bind_ddc_split_plan(m);
}
