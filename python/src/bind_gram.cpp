// SPDX-License-Identifier: Apache-2.0
// Bindings: gram, GramAccumulator.
#include <pybind11/eigen.h>
#include <pybind11/pybind11.h>

#include "bindings.hpp"
#include "deadspec/gram.hpp"
#include "dlpack_view.hpp"

namespace deadspec::python {

namespace {
GramSide parse_side(const std::string& side) {
    if (side == "auto") return GramSide::Auto;
    if (side == "feature") return GramSide::Feature;
    if (side == "sample") return GramSide::Sample;
    throw std::invalid_argument("deadspec.gram: side must be 'auto', 'feature' or 'sample', got '" +
                                side + "'");
}
}  // namespace

void bind_gram(py::module_& m) {
    m.def(
        "gram",
        [](const py::object& x, const std::string& side, bool center) {
            GramOptions opts{parse_side(side), center};
            DLPackView vx(x, "deadspec.gram", "x");
            py::gil_scoped_release nogil;
            return gram(vx.view(), opts);
        },
        py::arg("x"), py::kw_only(), py::arg("side") = "auto", py::arg("center") = false,
        R"doc(Activation Gram of an N×h DLPack tensor: (1/N)XᵀX (feature) or (1/N)XXᵀ (sample).

Parameters
----------
x : DLPack capsule
    N×h float32/float64 CPU tensor, any strides.
side : {"auto", "feature", "sample"}
center : bool
    Subtract the column means first.

Returns
-------
numpy.ndarray
    float64 symmetric matrix.)doc");

    m.def("resolve_gram_side", [](std::int64_t n, std::int64_t h, const std::string& side) {
        return resolve_gram_side(n, h, parse_side(side)) == GramSide::Feature ? "feature" : "sample";
    }, py::arg("n"), py::arg("h"), py::arg("side") = "auto");

    py::class_<GramAccumulator>(m, "GramAccumulator",
                                "Streaming feature-side Gram (running mean + centred scatter).")
        .def(py::init<std::int64_t>(), py::arg("features"))
        .def(
            "add",
            [](GramAccumulator& self, const py::object& batch) {
                DLPackView v(batch, "deadspec.GramAccumulator.add", "batch");
                py::gil_scoped_release nogil;
                self.add(v.view());
            },
            py::arg("batch"))
        .def("merge", &GramAccumulator::merge, py::arg("other"),
             py::call_guard<py::gil_scoped_release>())
        .def("gram", &GramAccumulator::gram, py::kw_only(), py::arg("center") = false,
             py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("count", &GramAccumulator::count)
        .def_property_readonly("features", &GramAccumulator::features)
        .def_property_readonly("mean", &GramAccumulator::mean);
}

}  // namespace deadspec::python
