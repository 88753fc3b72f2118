// SPDX-License-Identifier: Apache-2.0
// Declarations shared by the binding translation units.
#pragma once

#include <pybind11/pybind11.h>

namespace deadspec::python {
namespace py = pybind11;
void bind_gram(py::module_& m);
void bind_fisher(py::module_& m);
void bind_spectrum(py::module_& m);
void bind_slope(py::module_& m);
void bind_ddc(py::module_& m);
void bind_ddc_plan(py::module_& m);
void bind_ddc_split_plan(py::module_& m);
}  // namespace deadspec::python
