// SPDX-License-Identifier: Apache-2.0
// Bindings: the fused DDCAdam block step (in place on DLPack tensors).
#include <pybind11/eigen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "bindings.hpp"
#include "deadspec/ddc.hpp"
#include "dlpack_view.hpp"

namespace deadspec::python {

void bind_ddc(py::module_& m) {
    m.def(
        "ddc_adam_update",
        [](const py::object& param, const py::object& grad, const py::object& exp_avg,
           const py::object& exp_avg_sq, const py::object& scale, double lr, double beta1,
           double beta2, double eps, std::int64_t step) {
            constexpr const char* fn = "deadspec.ddc_adam_update";
            DLPackView vp(param, fn, "param");
            DLPackView vg(grad, fn, "grad");
            DLPackView vm(exp_avg, fn, "exp_avg");
            DLPackView vv(exp_avg_sq, fn, "exp_avg_sq");
            std::optional<DLPackView> vs;
            if (!scale.is_none()) vs.emplace(scale, fn, "scale");
            const AdamStep hp{lr, beta1, beta2, eps, step};
            py::gil_scoped_release nogil;
            ddc_adam_update(vp.view(), vg.view(), vm.view(), vv.view(),
                            vs ? vs->view() : TensorView{}, hp);
        },
        py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
        py::arg("scale"), py::kw_only(), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
        py::arg("eps"), py::arg("step"),
        "Fused DDCAdam block step in place (param, exp_avg, exp_avg_sq are written).");

    m.def(
        "ddc_row_norms",
        [](const py::object& weight, const py::object& col_scale, const py::object& bias) {
            constexpr const char* fn = "deadspec.ddc_row_norms";
            DLPackView vw(weight, fn, "weight");
            std::optional<DLPackView> vc, vb;
            if (!col_scale.is_none()) vc.emplace(col_scale, fn, "col_scale");
            if (!bias.is_none()) vb.emplace(bias, fn, "bias");
            py::gil_scoped_release nogil;
            return ddc_row_norms(vw.view(), vc ? vc->view() : TensorView{},
                                 vb ? vb->view() : TensorView{});
        },
        py::arg("weight"), py::arg("col_scale") = py::none(), py::arg("bias") = py::none(),
        "Row norms of [W·diag(col_scale) | b] (float64).");

    m.def(
        "ddc_gauge_dots",
        [](const py::object& x, const py::object& g, int axis) {
            constexpr const char* fn = "deadspec.ddc_gauge_dots";
            DLPackView vx(x, fn, "x");
            DLPackView vg(g, fn, "g");
            py::gil_scoped_release nogil;
            return ddc_gauge_dots(vx.view(), vg.view(), axis);
        },
        py::arg("x"), py::arg("g"), py::arg("axis"),
        "(Σ x·g, Σ |x·g|) along axis (1: per row, 0: per column), float64.");
}

}  // namespace deadspec::python
