// SPDX-License-Identifier: Apache-2.0
// Bindings: fisher_gram, fisher_gram_from_grads, route selection.
#include <pybind11/eigen.h>
#include <pybind11/pybind11.h>

#include "bindings.hpp"
#include "deadspec/fisher_gram.hpp"
#include "dlpack_view.hpp"

namespace deadspec::python {

namespace {
FisherRoute parse_route(const std::string& route) {
    if (route == "auto") return FisherRoute::Auto;
    if (route == "block-sum") return FisherRoute::BlockSum;
    if (route == "materialize") return FisherRoute::Materialize;
    throw std::invalid_argument(
        "deadspec.fisher_gram: route must be 'auto', 'block-sum' or 'materialize', got '" + route +
        "'");
}
const char* route_name(FisherRoute r) {
    return r == FisherRoute::Materialize ? "materialize" : "block-sum";
}
}  // namespace

void bind_fisher(py::module_& m) {
    m.def(
        "fisher_gram",
        [](const py::object& acts, const py::object& grads, bool bias, const std::string& route,
           std::int64_t chunk_bytes) {
            FisherGramOptions opts;
            opts.bias = bias;
            opts.route = parse_route(route);
            opts.chunk_bytes = chunk_bytes;
            DLPackView va(acts, "deadspec.fisher_gram", "acts");
            DLPackView vg(grads, "deadspec.fisher_gram", "grads");
            py::gil_scoped_release nogil;
            return fisher_gram(va.view(), vg.view(), opts);
        },
        py::arg("acts"), py::arg("grads"), py::kw_only(), py::arg("bias") = false,
        py::arg("route") = "auto", py::arg("chunk_bytes") = FisherGramOptions{}.chunk_bytes,
        "Fisher-Gram K_ij = <g_i, g_j>/N of a linear layer from inputs and output gradients.");

    m.def(
        "fisher_gram_from_grads",
        [](const py::object& g) {
            DLPackView v(g, "deadspec.fisher_gram_from_grads", "grads");
            py::gil_scoped_release nogil;
            return fisher_gram_from_grads(v.view());
        },
        py::arg("grads"), "Fisher-Gram (1/N)ΓΓᵀ from materialised per-sample gradients (N×p).");

    m.def(
        "fisher_route",
        [](std::int64_t n, std::int64_t t, std::int64_t d_in, std::int64_t d_out,
           const std::string& route) {
            return route_name(resolve_fisher_route(n, t, d_in, d_out, parse_route(route)));
        },
        py::arg("n"), py::arg("t"), py::arg("d_in"), py::arg("d_out"), py::arg("route") = "auto");

    m.def(
        "fisher_gram_cost",
        [](std::int64_t n, std::int64_t t, std::int64_t d_in, std::int64_t d_out) {
            const auto c = fisher_gram_cost(n, t, d_in, d_out);
            py::dict d;
            d["block-sum"] = c.block_sum;
            d["materialize"] = c.materialize;
            return d;
        },
        py::arg("n"), py::arg("t"), py::arg("d_in"), py::arg("d_out"));
}

}  // namespace deadspec::python
