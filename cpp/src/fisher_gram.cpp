// SPDX-License-Identifier: Apache-2.0
// Fisher-Gram of a linear layer from (inputs, output gradients), never materialising all of Γ.
#include "deadspec/fisher_gram.hpp"

#include <algorithm>
#include <vector>

#include "detail/core.hpp"

namespace deadspec {

FisherGramCost fisher_gram_cost(std::int64_t n, std::int64_t t, std::int64_t d_in,
                                std::int64_t d_out) {
    const double N = static_cast<double>(n), T = static_cast<double>(t);
    const double di = static_cast<double>(d_in), dout = static_cast<double>(d_out);
    // Block sum: two (NT)×(NT) cross Grams and their Hadamard block sums.
    const double block = (N * T) * (N * T) * (di + dout + 1.0);
    // Materialise: g_i = A_iᵀ D_i for every i, then ΓΓᵀ (half, by symmetry).
    const double mat = N * T * di * dout + 0.5 * N * N * di * dout;
    return {block, mat};
}

FisherRoute resolve_fisher_route(std::int64_t n, std::int64_t t, std::int64_t d_in,
                                 std::int64_t d_out, FisherRoute route) {
    if (route != FisherRoute::Auto) return route;
    if (t == 1) return FisherRoute::BlockSum;
    const auto c = fisher_gram_cost(n, t, d_in, d_out);
    return c.materialize < c.block_sum ? FisherRoute::Materialize : FisherRoute::BlockSum;
}

namespace {

// K_ij = Σ_{t,s} (A_it·A_js)(D_it·D_js) / N for a chunk of rows i at a time, against the
// samples j ≥ i only (K is symmetric), so each cross Gram covers about half the square.
RowMatrixXd block_sum(const double* a, const double* d, std::int64_t n, std::int64_t t,
                      std::int64_t di, std::int64_t dout, std::int64_t chunk_bytes) {
    RowMatrixXd k(n, n);
    const std::int64_t nt = n * t;
    const std::int64_t per_sample = 2 * t * nt * static_cast<std::int64_t>(sizeof(double));
    const std::int64_t chunk =
        std::clamp<std::int64_t>(chunk_bytes / std::max<std::int64_t>(per_sample, 1), 1, n);
    std::vector<double> ca(static_cast<std::size_t>(chunk * t * nt));
    std::vector<double> cd(ca.size());
    const double inv_n = 1.0 / static_cast<double>(n);
    for (std::int64_t i0 = 0; i0 < n; i0 += chunk) {
        const std::int64_t c = std::min(chunk, n - i0);
        const std::int64_t cols = (n - i0) * t;  // positions of the samples j ≥ i0
        detail::gemm_nt(a + i0 * t * di, a + i0 * t * di, c * t, cols, di, ca.data());
        detail::gemm_nt(d + i0 * t * dout, d + i0 * t * dout, c * t, cols, dout, cd.data());
        for (std::int64_t ii = 0; ii < c; ++ii) {
            for (std::int64_t jj = ii; jj < n - i0; ++jj) {
                double s = 0.0;
                for (std::int64_t tt = 0; tt < t; ++tt) {
                    const std::size_t row = static_cast<std::size_t>((ii * t + tt) * cols + jj * t);
                    for (std::int64_t ss = 0; ss < t; ++ss)
                        s += ca[row + static_cast<std::size_t>(ss)] *
                             cd[row + static_cast<std::size_t>(ss)];
                }
                k(i0 + ii, i0 + jj) = s * inv_n;
                k(i0 + jj, i0 + ii) = s * inv_n;
            }
        }
    }
    return k;
}

// Γ formed in column chunks of the d_in axis: row i of a chunk is vec(A_i[:, r0:r1]ᵀ D_i).
RowMatrixXd materialize(const double* a, const double* d, std::int64_t n, std::int64_t t,
                        std::int64_t di, std::int64_t dout, std::int64_t chunk_bytes) {
    RowMatrixXd k = RowMatrixXd::Zero(n, n);
    const std::int64_t per_row = n * dout * static_cast<std::int64_t>(sizeof(double));
    const std::int64_t rb = std::clamp<std::int64_t>(chunk_bytes / std::max<std::int64_t>(per_row, 1), 1, di);
    RowMatrixXd gamma;
    for (std::int64_t r0 = 0; r0 < di; r0 += rb) {
        const std::int64_t r = std::min(rb, di - r0);
        if (gamma.cols() != r * dout) gamma.resize(n, r * dout);
        // g_i[r0:r0+r, :] = A_i[:, r0:r0+r]ᵀ D_i through BLAS (runtime-dispatched SIMD kernels).
        for (std::int64_t i = 0; i < n; ++i)
            detail::gemm_tn(a + i * t * di + r0, di, d + i * t * dout, r, dout, t,
                            gamma.row(i).data());
        detail::syrk_rows_accumulate(gamma.data(), n, r * dout, 1.0 / static_cast<double>(n), k);
    }
    detail::symmetrize_from_lower(k);
    return k;
}

}  // namespace

RowMatrixXd fisher_gram(const TensorView& acts, const TensorView& grads,
                        const FisherGramOptions& opts) {
    constexpr const char* fn = "deadspec.fisher_gram";
    detail::check_cpu_float(acts, fn, "acts");
    detail::check_cpu_float(grads, fn, "grads");
    DEADSPEC_CHECK_ARG(acts.ndim() == 2 || acts.ndim() == 3, fn,
                       ": acts must be 2-D (N, d_in) or 3-D (N, T, d_in), got shape ",
                       acts.shape_string());
    DEADSPEC_CHECK_ARG(grads.ndim() == acts.ndim(), fn, ": grads must be ", acts.ndim(),
                       "-D like acts, got shape ", grads.shape_string());
    DEADSPEC_CHECK_ARG(grads.shape[0] == acts.shape[0], fn,
                       ": grads must have the same number of samples N as acts (",
                       acts.shape[0], "), got shape ", grads.shape_string());
    if (acts.ndim() == 3)
        DEADSPEC_CHECK_ARG(grads.shape[1] == acts.shape[1], fn,
                           ": grads must have the same sequence length T as acts (",
                           acts.shape[1], "), got shape ", grads.shape_string());
    DEADSPEC_CHECK_ARG(opts.chunk_bytes > 0, fn, ": chunk_bytes must be positive, got ",
                       opts.chunk_bytes);

    const std::int64_t n = acts.shape[0];
    const std::int64_t t = acts.ndim() == 3 ? acts.shape[1] : 1;
    const auto ha = detail::host_matrix(acts, acts.ndim() - 1, fn, "acts");
    const auto hd = detail::host_matrix(grads, grads.ndim() - 1, fn, "grads");
    const std::int64_t di = ha.cols(), dout = hd.cols();
    const double inv_n = 1.0 / static_cast<double>(n);

    RowMatrixXd k;
    if (t == 1) {
        RowMatrixXd ka = detail::gram_rows(ha.data(), n, di, 1.0);
        const RowMatrixXd kd = detail::gram_rows(hd.data(), n, dout, 1.0);
        k = ka.cwiseProduct(kd) * inv_n;
        if (opts.bias) k += kd * inv_n;
        detail::check_finite_result(k, fn);
        return k;
    }
    const FisherRoute route = resolve_fisher_route(n, t, di, dout, opts.route);
    if (route == FisherRoute::BlockSum) {
        k = block_sum(ha.data(), hd.data(), n, t, di, dout, opts.chunk_bytes);
    } else {
        k = materialize(ha.data(), hd.data(), n, t, di, dout, opts.chunk_bytes);
    }
    if (opts.bias) {
        RowMatrixXd sums(n, dout);
        for (std::int64_t i = 0; i < n; ++i)
            sums.row(i) = Eigen::Map<const RowMatrixXd>(hd.data() + i * t * dout, t, dout)
                              .colwise()
                              .sum();
        k += detail::gram_rows(sums.data(), n, dout, inv_n);
    }
    detail::check_finite_result(k, fn);
    return k;
}

RowMatrixXd fisher_gram_from_grads(const TensorView& per_sample_grads) {
    constexpr const char* fn = "deadspec.fisher_gram_from_grads";
    detail::check_cpu_float(per_sample_grads, fn, "grads");
    DEADSPEC_CHECK_ARG(per_sample_grads.ndim() >= 2, fn,
                       ": grads must be at least 2-D (N, p...), got shape ",
                       per_sample_grads.shape_string());
    const auto h = detail::host_matrix(per_sample_grads, 1, fn, "grads");
    RowMatrixXd k = detail::gram_rows(h.data(), h.rows(), h.cols(), 1.0 / static_cast<double>(h.rows()));
    detail::check_finite_result(k, fn);
    return k;
}

}  // namespace deadspec
