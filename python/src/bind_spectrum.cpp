// SPDX-License-Identifier: Apache-2.0
// Bindings: sym_eig, spectrum, spectrum_from_eigenvalues, logdet_top, default_rtol.
#include <pybind11/eigen.h>
#include <pybind11/pybind11.h>

#include "bindings.hpp"
#include "deadspec/spectrum.hpp"
#include "dlpack_view.hpp"

namespace deadspec::python {

namespace {
DType parse_dtype(const std::string& name) {
    if (name == "float64") return DType::Float64;
    if (name == "float32") return DType::Float32;
    if (name == "float16") return DType::Float16;
    if (name == "bfloat16") return DType::BFloat16;
    throw DTypeError("deadspec.spectrum: input_dtype must be a floating dtype, got '" + name + "'");
}

SpectrumOptions make_options(double rtol, const std::string& input_dtype, std::int64_t rtol_size,
                             double gap_ratio, bool vectors) {
    SpectrumOptions o;
    o.rtol = rtol;
    o.input_dtype = parse_dtype(input_dtype);
    o.rtol_size = rtol_size;
    o.gap_ratio = gap_ratio;
    o.vectors = vectors;
    return o;
}

py::dict to_dict(Spectrum&& s, bool vectors) {
    py::dict d;
    d["eigenvalues"] = py::cast(std::move(s.eigenvalues));
    d["eigenvectors"] = vectors ? py::cast(std::move(s.eigenvectors)) : py::none();
    d["logdet_plus"] = s.logdet_plus;
    d["active"] = s.active;
    d["structural_zeros"] = s.structural_zeros;
    d["dead_count"] = s.dead_count;
    d["clipped"] = s.clipped;
    d["lambda_min"] = s.lambda_min;
    d["effective_rank"] = s.effective_rank;
    d["participation_ratio"] = s.participation_ratio;
    d["condition_number"] = s.condition_number;
    d["threshold"] = s.threshold;
    d["rtol"] = s.rtol;
    return d;
}
}  // namespace

void bind_spectrum(py::module_& m) {
    m.def("eig_backend", &eig_backend);
    m.def("num_threads", &num_threads, "Threads the BLAS/LAPACK backend may use.");
    m.def("threads_in_use", &threads_in_use,
          "BLAS/LAPACK threads in use now (in auto mode: the last choice).");
    m.def("openmp_runtime", &openmp_runtime,
          "The OpenMP runtime (file) the optimizer plans' passes run their threads in: the "
          "process's own (torch's libgomp), or '' when none is loaded or DEADSPEC_OPENMP=0.");
    m.def("set_num_threads", &set_num_threads, py::arg("n"),
          "Fix the BLAS/LAPACK (OpenBLAS) thread count of the core.");
    m.def("set_num_threads_auto", &set_num_threads_auto,
          "Return the core's BLAS/LAPACK threads to auto mode (the default).");

    m.def(
        "sym_eig",
        [](const py::object& a, bool vectors) {
            SymEigResult r;
            {
                DLPackView v(a, "deadspec.sym_eig", "a");
                py::gil_scoped_release nogil;
                r = sym_eig(v.view(), vectors);
            }
            if (r.status != EigStatus::Success)
                throw Error("deadspec.sym_eig: the eigensolver did not converge");
            py::object vecs = vectors ? py::cast(std::move(r.vectors)) : py::none();
            return py::make_tuple(py::cast(std::move(r.values)), vecs);
        },
        py::arg("a"), py::kw_only(), py::arg("vectors") = false,
        "Eigenvalues (descending) and optionally eigenvectors (columns) of a symmetric matrix.");

    m.def(
        "spectrum",
        [](const py::object& g, double rtol, const std::string& input_dtype,
           std::int64_t rtol_size, double gap_ratio, bool vectors) {
            const auto opts = make_options(rtol, input_dtype, rtol_size, gap_ratio, vectors);
            Spectrum s;
            {
                DLPackView v(g, "deadspec.spectrum", "g");
                py::gil_scoped_release nogil;
                s = spectrum(v.view(), opts);
            }
            return to_dict(std::move(s), vectors);
        },
        py::arg("g"), py::kw_only(), py::arg("rtol") = -1.0, py::arg("input_dtype") = "float64",
        py::arg("rtol_size") = 0, py::arg("gap_ratio") = 1e3, py::arg("vectors") = false,
        "Spectral readings of a symmetric PSD matrix (a dict; see deadspec.Spectrum).");

    m.def(
        "spectrum_from_eigenvalues",
        [](const Eigen::VectorXd& values, double rtol, const std::string& input_dtype,
           std::int64_t rtol_size, double gap_ratio) {
            const auto opts = make_options(rtol, input_dtype, rtol_size, gap_ratio, false);
            return to_dict(spectrum_from_eigenvalues(values, opts), false);
        },
        py::arg("values"), py::kw_only(), py::arg("rtol") = -1.0,
        py::arg("input_dtype") = "float64", py::arg("rtol_size") = 0, py::arg("gap_ratio") = 1e3);

    m.def("logdet_top", &logdet_top, py::arg("eigenvalues"), py::arg("k"),
          "Σ log of the k largest eigenvalues of a descending vector.");

    m.def(
        "default_rtol",
        [](const std::string& input_dtype, std::int64_t size) {
            return default_rtol(parse_dtype(input_dtype), size);
        },
        py::arg("input_dtype"), py::arg("size"));
}

}  // namespace deadspec::python
