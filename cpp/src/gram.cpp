// SPDX-License-Identifier: Apache-2.0
// Activation Gram, one-shot and streaming.
#include "deadspec/gram.hpp"

#if defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

#include "detail/core.hpp"

namespace deadspec {

namespace {
// Physical memory of the machine in bytes; 0 where it cannot be told.
double physical_memory_bytes() {
#if defined(__unix__) || defined(__APPLE__)
    const long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && size > 0) return static_cast<double>(pages) * static_cast<double>(size);
#endif
    return 0.0;
}
}  // namespace

GramSide resolve_gram_side(std::int64_t n, std::int64_t h, GramSide side) {
    if (side != GramSide::Auto) return side;
    return n < h ? GramSide::Sample : GramSide::Feature;
}

RowMatrixXd gram(const TensorView& x, const GramOptions& opts) {
    constexpr const char* fn = "deadspec.gram";
    detail::check_cpu_float(x, fn, "x");
    DEADSPEC_CHECK_ARG(x.ndim() == 2, fn, ": x must be 2-D (N, h), got shape ", x.shape_string());
    const auto h = detail::host_matrix(x, 1, fn, "x");
    const std::int64_t n = h.rows(), d = h.cols();
    const double alpha = 1.0 / static_cast<double>(n);
    const GramSide side = resolve_gram_side(n, d, opts.side);

    const double* data = h.data();
    RowMatrixXd centred;
    if (opts.center) {
        // Centring needs a copy anyway; subtracting the mean first keeps the result accurate
        // when the mean dominates (no cancellation between E[xxᵀ] and mean·meanᵀ).
        centred = h.map();
        centred.rowwise() -= centred.colwise().mean();
        data = centred.data();
    }
    RowMatrixXd g = side == GramSide::Feature ? detail::gram_cols(data, n, d, alpha)
                                              : detail::gram_rows(data, n, d, alpha);
    detail::check_finite_result(g, fn);
    return g;
}

GramAccumulator::GramAccumulator(std::int64_t features) : m_features(features) {
    DEADSPEC_CHECK_ARG(features > 0, "deadspec.GramAccumulator: features must be positive, got ",
                       features);
    // the h×h scatter and the h×h Gram a reading makes: refuse what cannot fit in memory
    const double bytes = 8.0 * static_cast<double>(features) * static_cast<double>(features);
    const double memory = physical_memory_bytes();
    DEADSPEC_CHECK_ARG(memory <= 0.0 || bytes <= memory, "deadspec.GramAccumulator: features must",
                       " keep the ", features, "×", features, " float64 scatter (", bytes / 1e9,
                       " GB) within the machine's memory (", memory / 1e9, " GB), got features=",
                       features, "; read fewer features, or the sample-side Gram");
    m_mean = Eigen::VectorXd::Zero(features);
    m_scatter = Eigen::MatrixXd::Zero(features, features);
}

namespace {
// Chan, Golub & LeVeque pairwise update of (count, mean, scatter).
void combine(std::int64_t& n_a, Eigen::VectorXd& mean_a, Eigen::MatrixXd& scatter_a,
             std::int64_t n_b, const Eigen::VectorXd& mean_b, const Eigen::MatrixXd& scatter_b) {
    if (n_b == 0) return;
    if (n_a == 0) {
        n_a = n_b;
        mean_a = mean_b;
        scatter_a = scatter_b;
        return;
    }
    const double na = static_cast<double>(n_a), nb = static_cast<double>(n_b);
    const double n = na + nb;
    const Eigen::VectorXd delta = mean_b - mean_a;
    scatter_a += scatter_b;
    scatter_a.selfadjointView<Eigen::Lower>().rankUpdate(delta, na * nb / n);
    mean_a += delta * (nb / n);
    n_a += n_b;
}
}  // namespace

void GramAccumulator::add(const TensorView& batch) {
    constexpr const char* fn = "deadspec.GramAccumulator.add";
    detail::check_cpu_float(batch, fn, "batch");
    DEADSPEC_CHECK_ARG(batch.ndim() == 2, fn, ": batch must be 2-D (B, h), got shape ",
                       batch.shape_string());
    DEADSPEC_CHECK_ARG(batch.shape[1] == m_features, fn, ": batch must have ", m_features,
                       " columns, got shape ", batch.shape_string());
    if (batch.shape[0] == 0) return;
    const auto h = detail::host_matrix(batch, 1, fn, "batch");
    RowMatrixXd centred = h.map();
    const Eigen::VectorXd mean = centred.colwise().mean().transpose();
    centred.rowwise() -= mean.transpose();
    const RowMatrixXd s = detail::gram_cols(centred.data(), h.rows(), h.cols(), 1.0);
    const Eigen::MatrixXd scatter = s;
    combine(m_count, m_mean, m_scatter, h.rows(), mean, scatter);
}

void GramAccumulator::merge(const GramAccumulator& other) {
    DEADSPEC_CHECK_ARG(other.m_features == m_features,
                       "deadspec.GramAccumulator.merge: other must have ", m_features,
                       " features, got ", other.m_features);
    combine(m_count, m_mean, m_scatter, other.m_count, other.m_mean, other.m_scatter);
}

RowMatrixXd GramAccumulator::gram(bool center) const {
    DEADSPEC_CHECK_ARG(m_count > 0, "deadspec.GramAccumulator.gram: no rows have been added");
    RowMatrixXd g = m_scatter;
    if (!center) g.selfadjointView<Eigen::Lower>().rankUpdate(m_mean, static_cast<double>(m_count));
    g /= static_cast<double>(m_count);
    detail::symmetrize_from_lower(g);
    detail::check_finite_result(g, "deadspec.GramAccumulator.gram");
    return g;
}

}  // namespace deadspec
