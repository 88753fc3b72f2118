// SPDX-License-Identifier: Apache-2.0
// Tests of the Fisher-Gram against per-sample gradients formed explicitly.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

#include "deadspec/deadspec.hpp"
#include "test_util.hpp"

using namespace deadspec;

namespace {
// Γ with row i = vec(Σ_t δ_it a_itᵀ) (+ Σ_t δ_it for the bias), K = ΓΓᵀ/N.
RowMatrixXd brute_force(const RowMatrixXd& a, const RowMatrixXd& d, Eigen::Index n,
                        Eigen::Index t, bool bias) {
    const Eigen::Index di = a.cols(), dout = d.cols();
    RowMatrixXd gamma = RowMatrixXd::Zero(n, di * dout + (bias ? dout : 0));
    for (Eigen::Index i = 0; i < n; ++i)
        for (Eigen::Index s = 0; s < t; ++s) {
            const auto ar = a.row(i * t + s);
            const auto dr = d.row(i * t + s);
            for (Eigen::Index p = 0; p < dout; ++p) {
                for (Eigen::Index q = 0; q < di; ++q) gamma(i, p * di + q) += dr(p) * ar(q);
                if (bias) gamma(i, di * dout + p) += dr(p);
            }
        }
    return gamma * gamma.transpose() / double(n);
}
}  // namespace

TEST(FisherGram, TwoDimMatchesPerSampleGradients) {
    const RowMatrixXd a = dtest::make_data(12, 5, 10), d = dtest::make_data(12, 3, 11);
    for (bool bias : {false, true}) {
        FisherGramOptions o;
        o.bias = bias;
        auto k = fisher_gram(TensorView::cpu(a), TensorView::cpu(d), o);
        auto ref = brute_force(a, d, 12, 1, bias);
        EXPECT_LT((k - ref).cwiseAbs().maxCoeff(), 1e-12 * ref.cwiseAbs().maxCoeff()) << bias;
    }
}

TEST(FisherGram, SequenceRoutesAgreeWithBruteForce) {
    const Eigen::Index n = 6, t = 4, di = 5, dout = 3;
    const RowMatrixXd a = dtest::make_data(n * t, di, 12), d = dtest::make_data(n * t, dout, 13);
    TensorView va = TensorView::cpu(a.data(), {n, t, di});
    TensorView vd = TensorView::cpu(d.data(), {n, t, dout});
    for (auto route : {FisherRoute::BlockSum, FisherRoute::Materialize}) {
        for (bool bias : {false, true}) {
            FisherGramOptions o;
            o.bias = bias;
            o.route = route;
            o.chunk_bytes = 64;  // force several chunks
            auto k = fisher_gram(va, vd, o);
            auto ref = brute_force(a, d, n, t, bias);
            EXPECT_LT((k - ref).cwiseAbs().maxCoeff(), 1e-11 * ref.cwiseAbs().maxCoeff())
                << "route=" << int(route) << " bias=" << bias;
        }
    }
}

// Every route, with every storage the core reads differently (float64 in place, float32
// converted, strided float32 and float64 views), at the default scratch budget and at budgets
// that force per-position panels and one-column tiles, equals the float64 reference to 1e-12.
TEST(FisherGram, RoutesAgreeAcrossStoragesAndBudgets) {
    const Eigen::Index n = 11, t = 5, di = 6, dout = 4, pad = 3;
    // Values exactly representable in float32, so the float32 views hold the same numbers.
    RowMatrixXd a = dtest::make_data(n * t, di, 21), d = dtest::make_data(n * t, dout, 22);
    for (Eigen::Index i = 0; i < a.size(); ++i) a.data()[i] = double(float(a.data()[i]));
    for (Eigen::Index i = 0; i < d.size(); ++i) d.data()[i] = double(float(d.data()[i]));
    std::vector<float> af(a.data(), a.data() + a.size()), df(d.data(), d.data() + d.size());
    // Padded rows (stride di + pad along T) and a column-major layout (stride along d != 1).
    std::vector<double> ap(static_cast<std::size_t>(n * t * (di + pad)));
    std::vector<float> dcol(static_cast<std::size_t>(n * t * dout));
    for (Eigen::Index r = 0; r < n * t; ++r) {
        for (Eigen::Index c = 0; c < di; ++c) ap[static_cast<std::size_t>(r * (di + pad) + c)] = a(r, c);
        for (Eigen::Index c = 0; c < dout; ++c)
            dcol[static_cast<std::size_t>(c * n * t + r)] = static_cast<float>(d(r, c));
    }
    TensorView a_pad = TensorView::cpu(ap.data(), {n, t, di});
    a_pad.strides = {t * (di + pad), di + pad, 1};
    TensorView d_col = TensorView::cpu(dcol.data(), {n, t, dout});
    d_col.strides = {t, 1, n * t};
    const std::vector<std::pair<TensorView, TensorView>> views = {
        {TensorView::cpu(a.data(), {n, t, di}), TensorView::cpu(d.data(), {n, t, dout})},
        {TensorView::cpu(af.data(), {n, t, di}), TensorView::cpu(df.data(), {n, t, dout})},
        {a_pad, d_col},
        {TensorView::cpu(af.data(), {n, t, di}), TensorView::cpu(d.data(), {n, t, dout})},
    };
    for (bool bias : {false, true}) {
        const RowMatrixXd ref = brute_force(a, d, n, t, bias);
        const double tol = 1e-12 * ref.cwiseAbs().maxCoeff();
        for (std::size_t v = 0; v < views.size(); ++v)
            for (auto route : {FisherRoute::Auto, FisherRoute::BlockSum, FisherRoute::Materialize})
                for (std::int64_t budget : {std::int64_t(8), std::int64_t(2000),
                                            FisherGramOptions{}.chunk_bytes}) {
                    FisherGramOptions o;
                    o.bias = bias;
                    o.route = route;
                    o.chunk_bytes = budget;
                    const auto k = fisher_gram(views[v].first, views[v].second, o);
                    EXPECT_LT((k - ref).cwiseAbs().maxCoeff(), tol)
                        << "view=" << v << " route=" << int(route) << " budget=" << budget
                        << " bias=" << bias;
                    EXPECT_EQ((k - k.transpose()).cwiseAbs().maxCoeff(), 0.0);
                }
    }
}

// A worker-path case: N samples of T positions, padded (sample i keeps its first i % T + 1
// positions, a = δ = 0 after them) or rank-deficient (samples N/2.. repeat samples 0..), with
// values exactly representable in float32 (so the float32 and float64 views hold the same K).
struct SeqCase {
    Eigen::Index n, t, di, dout;
    bool pad, repeat;
};
std::pair<RowMatrixXd, RowMatrixXd> seq_case_data(const SeqCase& c) {
    RowMatrixXd a = dtest::make_data(c.n * c.t, c.di, 31);
    RowMatrixXd d = dtest::make_data(c.n * c.t, c.dout, 32);
    for (Eigen::Index i = 0; c.pad && i < c.n; ++i)
        for (Eigen::Index s = (i % c.t) + 1; s < c.t; ++s) {
            a.row(i * c.t + s).setZero();
            d.row(i * c.t + s).setZero();
        }
    for (Eigen::Index i = 0; c.repeat && i < c.n / 2; ++i) {
        a.middleRows((c.n / 2 + i) * c.t, c.t) = a.middleRows(i * c.t, c.t);
        d.middleRows((c.n / 2 + i) * c.t, c.t) = d.middleRows(i * c.t, c.t);
    }
    for (RowMatrixXd* m : {&a, &d})
        for (Eigen::Index i = 0; i < m->size(); ++i) m->data()[i] = double(float(m->data()[i]));
    return {a, d};
}

// The worker paths (both routes: row blocks of F or the two Grams of T = 1; tiles of Γ with
// per-worker partial K's) at one and two workers, against the float64 reference to 1e-12: T = 1
// on both routes, one sample (fewer samples than workers), d_out = 1 with one-column tiles (a
// tile narrower than the workers can leave worker 0's K unwritten), padded sequences, a
// rank-deficient batch, N ≥ 128 (the finish split over workers), float32 and float64 inputs,
// and budgets from one-column tiles to the default.
TEST(FisherGram, WorkerPathsMatchReference) {
    const std::vector<SeqCase> cases = {
        {9, 1, 5, 3, false, false},  {1, 4, 3, 2, false, false},   {7, 3, 4, 1, false, false},
        {10, 6, 5, 4, true, false},  {12, 5, 3, 6, false, true},   {33, 2, 2, 3, false, false},
        {140, 1, 4, 3, false, false}, {130, 2, 3, 2, true, false}};
    for (const int threads : {1, 2}) {
        set_num_threads(threads);
        for (const SeqCase& c : cases) {
            const auto [a, d] = seq_case_data(c);
            const std::vector<float> af(a.data(), a.data() + a.size());
            const std::vector<float> df(d.data(), d.data() + d.size());
            const std::vector<std::pair<TensorView, TensorView>> views = {
                {TensorView::cpu(a.data(), {c.n, c.t, c.di}),
                 TensorView::cpu(d.data(), {c.n, c.t, c.dout})},
                {TensorView::cpu(af.data(), {c.n, c.t, c.di}),
                 TensorView::cpu(df.data(), {c.n, c.t, c.dout})}};
            for (bool bias : {false, true}) {
                const RowMatrixXd ref = brute_force(a, d, c.n, c.t, bias);
                const double tol = 1e-12 * std::max(ref.cwiseAbs().maxCoeff(), 1e-300);
                for (auto route : {FisherRoute::BlockSum, FisherRoute::Materialize})
                    for (std::int64_t budget : {std::int64_t(8), std::int64_t(3000),
                                                FisherGramOptions{}.chunk_bytes})
                        for (std::size_t v = 0; v < views.size(); ++v) {
                            FisherGramOptions o;
                            o.bias = bias;
                            o.route = route;
                            o.chunk_bytes = budget;
                            const auto k = fisher_gram(views[v].first, views[v].second, o);
                            EXPECT_LT((k - ref).cwiseAbs().maxCoeff(), tol)
                                << "threads=" << threads << " n=" << c.n << " t=" << c.t
                                << " route=" << int(route) << " budget=" << budget
                                << " float32=" << v << " bias=" << bias;
                            EXPECT_EQ((k - k.transpose()).cwiseAbs().maxCoeff(), 0.0);
                        }
            }
        }
    }
    set_num_threads_auto();
}

// A non-finite value in the last sample (formed by the last worker while the first waits at the
// tile's barrier) is reported, not left waiting.
TEST(FisherGram, NonFiniteInLastSampleIsReported) {
    const Eigen::Index n = 40, t = 3;
    std::vector<float> a(static_cast<std::size_t>(n * t * 2), 1.0f), d(a.size(), 0.5f);
    d[d.size() - 1] = std::numeric_limits<float>::infinity();
    const TensorView va = TensorView::cpu(a.data(), {n, t, 2});
    const TensorView vd = TensorView::cpu(d.data(), {n, t, 2});
    for (const int threads : {1, 2})
        for (auto route : {FisherRoute::BlockSum, FisherRoute::Materialize}) {
            set_num_threads(threads);
            FisherGramOptions o;
            o.route = route;
            try {
                fisher_gram(va, vd, o);
                FAIL() << int(route);
            } catch (const std::invalid_argument& e) {
                EXPECT_NE(std::string(e.what()).find(
                              "grads must be finite, got Inf at flat index 239"),
                          std::string::npos)
                    << e.what();
            }
        }
    set_num_threads_auto();
}

TEST(FisherGram, RejectsNonFiniteInEveryRoute) {
    const Eigen::Index n = 4, t = 3;
    std::vector<float> a(static_cast<std::size_t>(n * t * 2), 1.0f), d(static_cast<std::size_t>(n * t * 2), 1.0f);
    a[7] = std::numeric_limits<float>::quiet_NaN();
    for (auto route : {FisherRoute::BlockSum, FisherRoute::Materialize}) {
        FisherGramOptions o;
        o.route = route;
        try {
            fisher_gram(TensorView::cpu(a.data(), {n, t, 2}), TensorView::cpu(d.data(), {n, t, 2}), o);
            FAIL() << int(route);
        } catch (const std::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find("acts must be finite, got NaN at flat index 7"),
                      std::string::npos)
                << e.what();
        }
    }
}

TEST(FisherGram, RouteChoiceFollowsOperationCount) {
    EXPECT_EQ(resolve_fisher_route(512, 1, 512, 512, FisherRoute::Auto), FisherRoute::BlockSum);
    // Long sequences through a small layer: materialising is cheaper.
    EXPECT_EQ(resolve_fisher_route(512, 64, 16, 16, FisherRoute::Auto), FisherRoute::Materialize);
    // Short sequences through a wide layer: block sums.
    EXPECT_EQ(resolve_fisher_route(512, 3, 512, 512, FisherRoute::Auto), FisherRoute::BlockSum);
    const auto c = fisher_gram_cost(512, 64, 16, 16);
    EXPECT_LT(c.materialize, c.block_sum);
}

TEST(FisherGram, FromGradsIsGammaGammaT) {
    const RowMatrixXd g = dtest::make_data(7, 20, 14);
    auto k = fisher_gram_from_grads(TensorView::cpu(g));
    EXPECT_LT((k - g * g.transpose() / 7.0).cwiseAbs().maxCoeff(), 1e-12);
}

TEST(FisherGram, RejectsMismatchedSamples) {
    const RowMatrixXd a = dtest::make_data(5, 3, 15), d = dtest::make_data(4, 2, 16);
    try {
        fisher_gram(TensorView::cpu(a), TensorView::cpu(d));
        FAIL();
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("same number of samples N as acts (5)"),
                  std::string::npos)
            << e.what();
    }
    const RowMatrixXd d3 = dtest::make_data(5, 2, 17);
    EXPECT_THROW(fisher_gram(TensorView::cpu(a.data(), {5, 1, 3}), TensorView::cpu(d3)),
                 std::invalid_argument);
}
