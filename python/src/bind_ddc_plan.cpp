// SPDX-License-Identifier: Apache-2.0
// Binding: DDCAdamPlan (Python DDCAdam's coordinate step over all blocks in two calls).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "deadspec/ddc_plan.hpp"
#include "deadspec/errors.hpp"
#include "dict_entry.hpp"
#include "dlpack_view.hpp"

namespace deadspec::python {

namespace {

constexpr const char* kFn = "deadspec.DDCAdamPlan";

// The plan and the capsules its views point into: the structure's (kept for the plan's life, so
// the tensors cannot be freed under it) and the current step's gradients (check() to step()).
struct PyPlan {
    std::vector<std::unique_ptr<DLPackView>> views;
    std::vector<std::unique_ptr<DLPackView>> grads;
    std::unique_ptr<DDCAdamPlan> plan;
};

std::unique_ptr<PyPlan> make_plan(const py::list& blocks, const py::list& sites,
                                  const std::vector<std::size_t>& order) {
    auto out = std::make_unique<PyPlan>();
    std::vector<PlanBlock> bs;
    std::size_t k = 0;
    for (const py::handle& h : blocks) {
        DictEntry e(h, std::string(kFn) + ": block " + std::to_string(k++),
                {"param", "exp_avg", "exp_avg_sq", "step", "row_site", "col_site", "col_axis",
                 "group", "fold_decay", "rot_axis", "rot_segments"},
                out->views);
        PlanBlock b;
        b.param = e.tensor("param", true);
        b.exp_avg = e.tensor("exp_avg", true);
        b.exp_avg_sq = e.tensor("exp_avg_sq", true);
        b.step = e.tensor("step", true);
        b.row_site = e.get<std::ptrdiff_t>("row_site", -1, "an int");
        b.col_site = e.get<std::ptrdiff_t>("col_site", -1, "an int");
        b.col_axis = e.get<int>("col_axis", 1, "an int");
        b.group = e.get<std::size_t>("group", 0, "a non-negative int");
        b.fold_decay = e.get<bool>("fold_decay", true, "a bool");
        b.rot_axis = e.get<int>("rot_axis", -1, "an int");
        b.rot_segments = e.get<std::vector<std::pair<std::int64_t, std::int64_t>>>(
            "rot_segments", {}, "a list of (start, stop) pairs");
        bs.push_back(std::move(b));
    }
    std::vector<PlanSite> ss;
    k = 0;
    for (const py::handle& h : sites) {
        DictEntry e(h, std::string(kFn) + ": site " + std::to_string(k++),
                {"weight", "bias", "in_site", "units", "weight_block", "bias_block"}, out->views);
        PlanSite s;
        s.weight = e.tensor("weight", true);
        s.bias = e.tensor("bias", false);
        s.in_site = e.get<std::ptrdiff_t>("in_site", -1, "an int");
        s.units = e.get<std::vector<std::int64_t>>("units", {}, "a list of ints");
        s.weight_block = e.get<std::ptrdiff_t>("weight_block", -1, "an int");
        s.bias_block = e.get<std::ptrdiff_t>("bias_block", -1, "an int");
        ss.push_back(std::move(s));
    }
    out->plan = std::make_unique<DDCAdamPlan>(std::move(bs), std::move(ss), order, kFn);
    return out;
}

}  // namespace

void bind_ddc_plan(py::module_& m) {
    py::class_<PyPlan>(m, "DDCAdamPlan",
                       "DDCAdam's coordinate step over all blocks (optim/adam.py), the structure "
                       "bound once: check(grads), then step(groups, bounded).")
        .def(py::init(&make_plan), py::arg("blocks"), py::arg("sites"), py::arg("order"),
             "blocks: dicts with the DLPack capsules param, exp_avg, exp_avg_sq, step (the "
             "float32 step count) and optional row_site, col_site (int, -1: none), col_axis "
             "(1; 0: a Conv1D consumer), group (int), fold_decay (bool), rot_axis with "
             "rot_segments; sites: dicts with weight, optional bias, in_site, units, "
             "weight_block, bias_block; order: the sites in topological order. Validated here.")
        .def_property_readonly("num_blocks", [](const PyPlan& p) { return p.plan->num_blocks(); })
        .def(
            "check",
            [](PyPlan& p, const py::list& grads) {
                std::vector<std::unique_ptr<DLPackView>> views;
                std::vector<TensorView> gs;
                std::size_t k = 0;
                for (const py::handle& h : grads) {
                    const std::string arg = "grads[" + std::to_string(k++) + "]";
                    if (h.is_none()) {
                        gs.emplace_back();
                        continue;
                    }
                    views.push_back(std::make_unique<DLPackView>(
                        py::reinterpret_borrow<py::object>(h), kFn, arg.c_str()));
                    gs.push_back(views.back()->view());
                }
                p.grads = std::move(views);
                py::gil_scoped_release nogil;
                return p.plan->check(gs);
            },
            py::arg("grads"),
            "Takes this step's gradients (a DLPack capsule per block, None: no gradient) and "
            "reads them once. Returns the first block whose gradient is not finite, or -1.")
        .def(
            "step",
            [](PyPlan& p, const std::vector<std::tuple<double, double, double, double, double>>&
                              groups,
               bool bounded) {
                std::vector<PlanGroup> gs;
                for (const auto& [lr, b1, b2, eps, wd] : groups) gs.push_back({lr, b1, b2, eps, wd});
                std::vector<std::int64_t> refused;
                std::vector<char> kept;
                {
                    py::gil_scoped_release nogil;
                    p.plan->step(gs, bounded, refused, kept);
                }
                p.grads.clear();
                std::vector<bool> k(kept.begin(), kept.end());
                return py::make_tuple(refused, k);
            },
            py::arg("groups"), py::arg("bounded"),
            "The step of every block with a gradient (groups: (lr, beta1, beta2, eps, "
            "weight_decay) per param group; bounded: the overflow screen may clear blocks). "
            "Returns (refused, kept) per block.")
        .def(
            "scale",
            [](const PyPlan& p, std::size_t i) {
                const std::vector<double> v = p.plan->scale(i);
                return py::array_t<double>(static_cast<py::ssize_t>(v.size()), v.data());
            },
            py::arg("site"), "ρ of a site from the last step, float64.")
        .def(
            "grad_max", [](const PyPlan& p, std::size_t k) { return p.plan->grad_max(k); },
            py::arg("block"), "max |g| of a block from the last check (NaN: not finite).");
}

}  // namespace deadspec::python
