// SPDX-License-Identifier: Apache-2.0
// Tests of the activation Gram and the streaming accumulator.
#include <gtest/gtest.h>

#include "deadspec/deadspec.hpp"
#include "test_util.hpp"

using namespace deadspec;

TEST(Gram, FeatureAndSideMatchDefinitions) {
    const RowMatrixXd x = dtest::make_data(30, 5, 3);
    const RowMatrixXd expect_f = x.transpose() * x / 30.0;
    const RowMatrixXd expect_s = x * x.transpose() / 30.0;
    auto gf = gram(TensorView::cpu(x), {GramSide::Feature, false});
    auto gs = gram(TensorView::cpu(x), {GramSide::Sample, false});
    auto ga = gram(TensorView::cpu(x));
    EXPECT_LT((gf - expect_f).cwiseAbs().maxCoeff(), 1e-12);
    EXPECT_LT((gs - expect_s).cwiseAbs().maxCoeff(), 1e-12);
    EXPECT_EQ(ga.rows(), 5);  // auto: the smaller side
    EXPECT_TRUE(gf.isApprox(gf.transpose(), 0.0));
}

TEST(Gram, AutoPicksSampleSideWhenFewerSamples) {
    const RowMatrixXd x = dtest::make_data(4, 9, 4);
    EXPECT_EQ(gram(TensorView::cpu(x)).rows(), 4);
    EXPECT_EQ(resolve_gram_side(4, 9, GramSide::Auto), GramSide::Sample);
    EXPECT_EQ(resolve_gram_side(9, 9, GramSide::Auto), GramSide::Feature);
}

TEST(Gram, CentredIsTheCovariance) {
    RowMatrixXd x = dtest::make_data(40, 3, 5);
    x.col(1).array() += 1e6;  // a large mean must not cost accuracy
    RowMatrixXd c = x;
    c.rowwise() -= c.colwise().mean();
    const RowMatrixXd expect = c.transpose() * c / 40.0;
    auto g = gram(TensorView::cpu(x), {GramSide::Feature, true});
    EXPECT_LT((g - expect).cwiseAbs().maxCoeff(), 1e-8);
}

TEST(Gram, RejectsWrongRank) {
    std::vector<double> a(8, 1.0);
    try {
        gram(TensorView::cpu(a.data(), {2, 2, 2}));
        FAIL();
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("deadspec.gram: x must be 2-D"), std::string::npos);
    }
}

TEST(GramAccumulator, StreamingEqualsOneShotAndMergeIsExact) {
    RowMatrixXd x = dtest::make_data(100, 6, 6);
    x.array() += 3.0;
    GramAccumulator a(6), b(6), all(6);
    a.add(TensorView::cpu(RowMatrixXd(x.topRows(37))));
    b.add(TensorView::cpu(RowMatrixXd(x.middleRows(37, 40))));
    b.add(TensorView::cpu(RowMatrixXd(x.bottomRows(23))));
    all.add(TensorView::cpu(x));
    a.merge(b);
    EXPECT_EQ(a.count(), 100);
    for (bool center : {false, true}) {
        const auto one = gram(TensorView::cpu(x), {GramSide::Feature, center});
        EXPECT_LT((a.gram(center) - one).cwiseAbs().maxCoeff(), 1e-10) << "center=" << center;
        EXPECT_LT((all.gram(center) - one).cwiseAbs().maxCoeff(), 1e-10) << "center=" << center;
    }
}

TEST(GramAccumulator, ErrorsAreClear) {
    EXPECT_THROW(GramAccumulator(0), std::invalid_argument);
    GramAccumulator a(3);
    EXPECT_THROW(a.gram(), std::invalid_argument);
    RowMatrixXd wrong = dtest::make_data(4, 2, 7);
    EXPECT_THROW(a.add(TensorView::cpu(wrong)), std::invalid_argument);
    GramAccumulator b(2);
    EXPECT_THROW(a.merge(b), std::invalid_argument);
}
