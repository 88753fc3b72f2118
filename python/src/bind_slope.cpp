// SPDX-License-Identifier: Apache-2.0
// Bindings: fit_slope.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings.hpp"
#include "deadspec/slope.hpp"

namespace deadspec::python {

void bind_slope(py::module_& m) {
    m.def(
        "fit_slope",
        [](const std::vector<double>& x, const std::vector<double>& y, const std::string& method) {
            SlopeMethod mth;
            if (method == "ols")
                mth = SlopeMethod::OLS;
            else if (method == "theil-sen")
                mth = SlopeMethod::TheilSen;
            else
                throw std::invalid_argument(
                    "deadspec.fit_slope: method must be 'ols' or 'theil-sen', got '" + method + "'");
            const SlopeFit f = fit_slope(x, y, mth);
            py::dict d;
            d["slope"] = f.slope;
            d["intercept"] = f.intercept;
            d["r2"] = f.r2;
            d["stderr"] = f.std_error;
            d["n"] = f.n;
            return d;
        },
        py::arg("x"), py::arg("y"), py::kw_only(), py::arg("method") = "ols",
        "Line fit y ≈ intercept + slope·x (OLS or Theil–Sen).");
}

}  // namespace deadspec::python
