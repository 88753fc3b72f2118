// SPDX-License-Identifier: Apache-2.0
// Binding: DDCSplitPlan (Python DDCAdam's split form over all blocks in two calls) and
// ddc_split_units (the per-unit step of one split site).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "deadspec/ddc_split_plan.hpp"
#include "deadspec/errors.hpp"
#include "dict_entry.hpp"
#include "dlpack_view.hpp"

namespace deadspec::python {

namespace {

constexpr const char* kFn = "deadspec.DDCSplitPlan";

using Groups = std::vector<std::tuple<double, double, double, double, double>>;

// The plan and the capsules its views point into: the structure's (kept for the plan's life, so
// the tensors cannot be freed under it) and the current step's gradients (check() to step()).
struct PySplitPlan {
    std::vector<std::unique_ptr<DLPackView>> views;
    std::vector<std::unique_ptr<DLPackView>> grads;
    std::unique_ptr<DDCSplitPlan> plan;
};

std::unique_ptr<PySplitPlan> make_plan(const py::list& blocks, const py::list& sites,
                                       const std::vector<std::size_t>& order) {
    auto out = std::make_unique<PySplitPlan>();
    std::vector<SplitPlanBlock> bs;
    std::size_t k = 0;
    for (const py::handle& h : blocks) {
        DictEntry e(h, std::string(kFn) + ": block " + std::to_string(k++),
                    {"param", "exp_avg", "exp_avg_sq", "step", "row_site", "col_site", "group",
                     "deferred", "col_mean", "rot_axis", "rot_segments"},
                    out->views);
        SplitPlanBlock b;
        b.param = e.tensor("param", true);
        b.exp_avg = e.tensor("exp_avg", true);
        b.exp_avg_sq = e.tensor("exp_avg_sq", true);
        b.step = e.tensor("step", true);
        b.row_site = e.get<std::ptrdiff_t>("row_site", -1, "an int");
        b.col_site = e.get<std::ptrdiff_t>("col_site", -1, "an int");
        b.group = e.get<std::size_t>("group", 0, "a non-negative int");
        b.deferred = e.get<bool>("deferred", false, "a bool");
        b.col_mean = e.tensor("col_mean", false);
        b.rot_axis = e.get<int>("rot_axis", -1, "an int");
        b.rot_segments = e.get<std::vector<std::pair<std::int64_t, std::int64_t>>>(
            "rot_segments", {}, "a list of (start, stop) pairs");
        bs.push_back(std::move(b));
    }
    std::vector<SplitPlanSite> ss;
    k = 0;
    for (const py::handle& h : sites) {
        DictEntry e(h, std::string(kFn) + ": site " + std::to_string(k++),
                    {"weight_block", "bias_block", "in_site", "units", "consumers", "group",
                     "exp_avg", "exp_avg_sq"},
                    out->views);
        SplitPlanSite s;
        s.weight_block = e.get<std::ptrdiff_t>("weight_block", -1, "an int");
        s.bias_block = e.get<std::ptrdiff_t>("bias_block", -1, "an int");
        s.in_site = e.get<std::ptrdiff_t>("in_site", -1, "an int");
        s.units = e.get<std::vector<std::int64_t>>("units", {}, "a list of ints");
        s.consumers = e.get<std::vector<std::size_t>>("consumers", {}, "a list of block indices");
        s.group = e.get<std::size_t>("group", 0, "a non-negative int");
        s.exp_avg = e.tensor("exp_avg", false);
        s.exp_avg_sq = e.tensor("exp_avg_sq", false);
        ss.push_back(std::move(s));
    }
    out->plan = std::make_unique<DDCSplitPlan>(std::move(bs), std::move(ss), order, kFn);
    return out;
}

std::int64_t split_units(const py::dict& args) {
    constexpr const char* fn = "deadspec.ddc_split_units";
    std::vector<std::unique_ptr<DLPackView>> views;
    DictEntry e(args, fn, {"q", "g_in", "n2", "g_out", "g_only", "units", "exp_avg", "exp_avg_sq",
                           "step", "beta1", "beta2", "eps", "lrs", "out"},
                views);
    SplitUnitsArgs a;
    for (const auto& [view, key] : {std::pair{&a.q, "q"}, std::pair{&a.g_in, "g_in"},
                                    std::pair{&a.n2, "n2"}, std::pair{&a.g_out, "g_out"},
                                    std::pair{&a.g_only, "g_only"},
                                    std::pair{&a.exp_avg, "exp_avg"},
                                    std::pair{&a.exp_avg_sq, "exp_avg_sq"}, std::pair{&a.out, "out"}})
        *view = e.tensor(key, true);
    a.units = e.get<std::vector<std::int64_t>>("units", {}, "a list of ints");
    DEADSPEC_CHECK_ARG(e.has("step"), fn, " needs 'step'");
    a.step = e.get<std::int64_t>("step", "an int");
    a.beta1 = e.get<double>("beta1", 0.9, "a float");
    a.beta2 = e.get<double>("beta2", 0.999, "a float");
    a.eps = e.get<double>("eps", 1e-8, "a float");
    a.lrs = e.get<std::vector<double>>("lrs", {}, "a list of floats");
    py::gil_scoped_release nogil;
    return ddc_split_units(a, fn);
}

}  // namespace

void bind_ddc_split_plan(py::module_& m) {
    py::class_<PySplitPlan>(m, "DDCSplitPlan",
                            "DDCAdam's split form over all blocks (optim/_splitplan.py), the "
                            "structure bound once: check(grads, groups), then step(site_steps).")
        .def(py::init(&make_plan), py::arg("blocks"), py::arg("sites"), py::arg("order"),
             "blocks: dicts with the DLPack capsules param, exp_avg, exp_avg_sq, step (the "
             "float32 step count) and optional row_site, col_site (int, -1: none), group (int), "
             "deferred (bool), col_mean (capsule), rot_axis with rot_segments; sites: dicts with "
             "weight_block and optional bias_block, in_site, units, consumers (block indices), "
             "group, exp_avg and exp_avg_sq (the radial Adam's moments); order: the sites in "
             "topological order. Validated here.")
        .def_property_readonly("num_blocks",
                               [](const PySplitPlan& p) { return p.plan->num_blocks(); })
        .def(
            "check",
            [](PySplitPlan& p, const py::list& grads, const Groups& groups) {
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
                std::vector<PlanGroup> gr;
                for (const auto& [lr, b1, b2, eps, wd] : groups) gr.push_back({lr, b1, b2, eps, wd});
                p.grads = std::move(views);
                py::gil_scoped_release nogil;
                return p.plan->check(gs, gr);
            },
            py::arg("grads"), py::arg("groups"),
            "Takes this step's gradients (a DLPack capsule per block, None: no gradient) and "
            "groups ((lr, beta1, beta2, eps, weight_decay) each), computes the scales and the "
            "first pass's sums. Returns the first block whose gradient is not finite, or -1.")
        .def(
            "split", [](const PySplitPlan& p, std::size_t i) { return p.plan->split(i); },
            py::arg("site"), "Whether a site is split this step (after check).")
        .def(
            "step",
            [](PySplitPlan& p, const std::vector<std::int64_t>& site_steps) {
                std::vector<std::int64_t> refused, site_refused;
                {
                    py::gil_scoped_release nogil;
                    p.plan->step(site_steps, refused, site_refused);
                }
                p.grads.clear();
                return py::make_tuple(refused, site_refused);
            },
            py::arg("site_steps"),
            "The rest of the step (site_steps: each site's radial step count before it). "
            "Returns (refused per block, refused units per site).");
    m.def("ddc_split_units", &split_units, py::arg("args"),
          "The per-unit step of one split site: a dict with the capsules q, g_in, n2, g_out, "
          "g_only, exp_avg, exp_avg_sq, out and step (int), beta1, beta2, eps, optional units, "
          "lrs. Returns the units whose radial moments were not finite (kept).");
}

}  // namespace deadspec::python
