// SPDX-License-Identifier: Apache-2.0
// Tests of the Fisher-Gram against per-sample gradients formed explicitly.
#include <gtest/gtest.h>

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
