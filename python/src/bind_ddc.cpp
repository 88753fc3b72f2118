// SPDX-License-Identifier: Apache-2.0
// Bindings: the fused DDCAdam block step (in place on DLPack tensors).
#include <pybind11/eigen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "deadspec/ddc.hpp"
#include "dlpack_view.hpp"

namespace deadspec::python {

void bind_ddc(py::module_& m) {
    m.def(
        "ddc_adam_update",
        [](const py::object& param, const py::object& grad, const py::object& exp_avg,
           const py::object& exp_avg_sq, const py::object& scale, double lr, double beta1,
           double beta2, double eps, std::int64_t step, const py::object& col_scale,
           double decay) {
            constexpr const char* fn = "deadspec.ddc_adam_update";
            DLPackView vp(param, fn, "param");
            DLPackView vg(grad, fn, "grad");
            DLPackView vm(exp_avg, fn, "exp_avg");
            DLPackView vv(exp_avg_sq, fn, "exp_avg_sq");
            std::optional<DLPackView> vs;
            std::optional<DLPackView> vc;
            if (!scale.is_none()) vs.emplace(scale, fn, "scale");
            if (!col_scale.is_none()) vc.emplace(col_scale, fn, "col_scale");
            const AdamStep hp{lr, beta1, beta2, eps, step, decay};
            py::gil_scoped_release nogil;
            ddc_adam_update(vp.view(), vg.view(), vm.view(), vv.view(),
                            vs ? vs->view() : TensorView{}, vc ? vc->view() : TensorView{}, hp);
        },
        py::arg("param"), py::arg("grad"), py::arg("exp_avg"), py::arg("exp_avg_sq"),
        py::arg("scale"), py::kw_only(), py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
        py::arg("eps"), py::arg("step"), py::arg("col_scale") = py::none(),
        py::arg("decay") = 1.0,
        "Fused DDCAdam block step in place (param, exp_avg, exp_avg_sq are written); "
        "σ = scale·col_scale, param multiplied by decay first.");

    m.def(
        "ddc_adam_update_many",
        [](const py::list& blocks) {
            constexpr const char* fn = "deadspec.ddc_adam_update_many";
            // The views own their capsules until the call returns (not movable: held by pointer).
            std::vector<std::unique_ptr<DLPackView>> views;
            std::vector<AdamBlock> bs;
            bs.reserve(blocks.size());
            auto view = [&](const py::handle& obj, const char* arg) {
                if (obj.is_none()) return TensorView{};
                views.push_back(std::make_unique<DLPackView>(py::reinterpret_borrow<py::object>(obj), fn, arg));
                return views.back()->view();
            };
            for (const py::handle& h : blocks) {
                const auto t = py::reinterpret_borrow<py::tuple>(h);
                DEADSPEC_CHECK_ARG(t.size() == 12 || t.size() == 14, fn,
                                   ": each block must be a 12-tuple (param, grad, exp_avg, "
                                   "exp_avg_sq, scale, col_scale, lr, beta1, beta2, eps, step, "
                                   "decay) or a 14-tuple adding (rot_axis, rot_segments), got ",
                                   t.size(), " entries");
                AdamBlock b;
                b.param = view(t[0], "param");
                b.grad = view(t[1], "grad");
                b.exp_avg = view(t[2], "exp_avg");
                b.exp_avg_sq = view(t[3], "exp_avg_sq");
                b.scale = view(t[4], "scale");
                b.col_scale = view(t[5], "col_scale");
                b.hp = AdamStep{t[6].cast<double>(), t[7].cast<double>(), t[8].cast<double>(),
                                t[9].cast<double>(), t[10].cast<std::int64_t>(),
                                t[11].cast<double>()};
                if (t.size() == 14) {
                    b.rot_axis = t[12].cast<int>();
                    b.rot_segments =
                        t[13].cast<std::vector<std::pair<std::int64_t, std::int64_t>>>();
                }
                bs.push_back(b);
            }
            py::gil_scoped_release nogil;
            ddc_adam_update_many(bs);
        },
        py::arg("blocks"),
        "Fused DDCAdam step of many blocks in one call: a list of 12-tuples (param, grad, "
        "exp_avg, exp_avg_sq, scale|None, col_scale|None, lr, beta1, beta2, eps, step, decay), "
        "or 14-tuples adding (rot_axis, rot_segments) for a block whose head segments are "
        "rotated (second moment shared per segment). All are validated before any is written.");

    // The split form's three passes: each takes a list of dicts (param, grad, exp_avg,
    // exp_avg_sq, lr, beta1, beta2, eps, step; optional row_scale, col_scale, col_mean,
    // row_coef, col_coef, col_norm, row_mult, col_mult, rot_axis, rot_segments).
    struct SplitArgs {
        std::vector<std::unique_ptr<DLPackView>> views;
        std::vector<SplitBlock> blocks;
    };
    auto parse_split = [](const py::list& blocks, const char* fn) {
        auto out = std::make_shared<SplitArgs>();
        auto view = [&](const py::dict& d, const char* key) {
            if (!d.contains(key) || d[key].is_none()) return TensorView{};
            out->views.push_back(std::make_unique<DLPackView>(
                py::reinterpret_borrow<py::object>(d[key]), fn, key));
            return out->views.back()->view();
        };
        static const char* known[] = {"param", "grad", "exp_avg", "exp_avg_sq", "row_scale",
                                      "col_scale", "col_mean", "row_coef", "col_coef",
                                      "col_norm", "row_mult", "col_mult", "lr", "beta1",
                                      "beta2", "eps", "step", "rot_axis", "rot_segments"};
        for (const py::handle& h : blocks) {
            DEADSPEC_CHECK_ARG(py::isinstance<py::dict>(h), fn, ": each block must be a dict");
            const auto d = py::reinterpret_borrow<py::dict>(h);
            for (const auto& item : d) {
                const auto key = item.first.cast<std::string>();
                DEADSPEC_CHECK_ARG(std::find(std::begin(known), std::end(known), key) !=
                                       std::end(known),
                                   fn, ": unknown block entry '", key, "'");
            }
            for (const char* key : {"param", "grad", "exp_avg", "exp_avg_sq", "lr", "beta1",
                                    "beta2", "eps", "step"})
                DEADSPEC_CHECK_ARG(d.contains(key), fn, ": a block needs '", key, "'");
            SplitBlock b;
            b.param = view(d, "param");
            b.grad = view(d, "grad");
            b.exp_avg = view(d, "exp_avg");
            b.exp_avg_sq = view(d, "exp_avg_sq");
            b.row_scale = view(d, "row_scale");
            b.col_scale = view(d, "col_scale");
            b.col_mean = view(d, "col_mean");
            b.row_coef = view(d, "row_coef");
            b.col_coef = view(d, "col_coef");
            b.col_norm = view(d, "col_norm");
            b.row_mult = view(d, "row_mult");
            b.col_mult = view(d, "col_mult");
            b.hp = AdamStep{d["lr"].cast<double>(), d["beta1"].cast<double>(),
                            d["beta2"].cast<double>(), d["eps"].cast<double>(),
                            d["step"].cast<std::int64_t>(), 1.0};
            if (d.contains("rot_axis") && !d["rot_axis"].is_none()) {
                b.rot_axis = d["rot_axis"].cast<int>();
                b.rot_segments =
                    d["rot_segments"].cast<std::vector<std::pair<std::int64_t, std::int64_t>>>();
            }
            out->blocks.push_back(b);
        }
        return out;
    };
    m.def(
        "ddc_split_sums",
        [parse_split](const py::list& blocks) {
            auto args = parse_split(blocks, "deadspec.ddc_split_sums");
            std::vector<SplitSums> res;
            {
                py::gil_scoped_release nogil;
                res = ddc_split_sums(args->blocks);
            }
            py::list out;
            for (const SplitSums& s : res)
                out.append(py::make_tuple(s.row_gx, s.row_xx, s.col_gx, s.col_xx));
            return out;
        },
        py::arg("blocks"),
        "Split form, pass 0: per block (Σ g̃x̃ per row, Σ x̃² per row, Σ g̃·Px̃ per column, "
        "Σ (Px̃)² per column), float64.");
    m.def(
        "ddc_split_moments",
        [parse_split](const py::list& blocks) {
            auto args = parse_split(blocks, "deadspec.ddc_split_moments");
            py::gil_scoped_release nogil;
            return ddc_split_moments(args->blocks);
        },
        py::arg("blocks"),
        "Split form, pass 1: moments on the tangential inputs (written); per block the "
        "update's (Σ u·x̃ per row, Σ u·Px̃ per column), float64.");
    m.def(
        "ddc_split_apply",
        [parse_split](const py::list& blocks) {
            auto args = parse_split(blocks, "deadspec.ddc_split_apply");
            py::gil_scoped_release nogil;
            ddc_split_apply(args->blocks);
        },
        py::arg("blocks"),
        "Split form, pass 2: the re-projected update applied in place (radial factors "
        "row_mult/col_mult, coefficients of the update in row_coef/col_coef).");

    m.def(
        "ddc_row_norms",
        [](const py::object& weight, const py::object& col_scale, const py::object& bias,
           double weight_factor, double bias_factor) {
            constexpr const char* fn = "deadspec.ddc_row_norms";
            DLPackView vw(weight, fn, "weight");
            std::optional<DLPackView> vc, vb;
            if (!col_scale.is_none()) vc.emplace(col_scale, fn, "col_scale");
            if (!bias.is_none()) vb.emplace(bias, fn, "bias");
            py::gil_scoped_release nogil;
            return ddc_row_norms(vw.view(), vc ? vc->view() : TensorView{},
                                 vb ? vb->view() : TensorView{}, weight_factor, bias_factor);
        },
        py::arg("weight"), py::arg("col_scale") = py::none(), py::arg("bias") = py::none(),
        py::arg("weight_factor") = 1.0, py::arg("bias_factor") = 1.0,
        "Row norms of [f_w·W·diag(col_scale) | f_b·b] (float64).");

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
