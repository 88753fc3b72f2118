// SPDX-License-Identifier: Apache-2.0
// Tests of the spectral readings: active set, log det⁺, dead cluster, ranks.
#include <gtest/gtest.h>

#include <cmath>

#include "deadspec/deadspec.hpp"
#include "test_util.hpp"

using namespace deadspec;

TEST(Spectrum, ReadingsOfAKnownSpectrum) {
    Eigen::VectorXd v(6);
    v << 4.0, 1e-9, 2.0, 1.0, 1e-8, 0.0;  // any order; two dead, one exact zero
    SpectrumOptions o;
    auto s = spectrum_from_eigenvalues(v, o);
    EXPECT_EQ(s.active, 5);
    EXPECT_EQ(s.structural_zeros, 1);
    EXPECT_EQ(s.dead_count, 2);  // gap 1 → 1e-8 is ≥ 1e3
    EXPECT_DOUBLE_EQ(s.lambda_min, 1e-9);
    EXPECT_NEAR(s.logdet_plus, std::log(4.0 * 2.0 * 1.0 * 1e-8 * 1e-9), 1e-12);
    EXPECT_DOUBLE_EQ(s.eigenvalues[0], 4.0);
    const double total = 4 + 2 + 1 + 1e-8 + 1e-9;
    EXPECT_NEAR(s.participation_ratio, total * total / (16 + 4 + 1 + 1e-16 + 1e-18), 1e-12);
    EXPECT_NEAR(s.condition_number, 4.0 / 1e-9, 1.0);
}

TEST(Spectrum, NoGapMeansNoDeadCount) {
    Eigen::VectorXd v(4);
    v << 1.0, 0.5, 0.25, 0.125;
    auto s = spectrum_from_eigenvalues(v);
    EXPECT_EQ(s.dead_count, 0);
    EXPECT_EQ(s.active, 4);
    EXPECT_NEAR(s.effective_rank, std::exp(-(v.array() / v.sum() * (v.array() / v.sum()).log()).sum()), 1e-12);
}

TEST(Spectrum, NegativeRoundOffIsClippedAndCounted) {
    Eigen::VectorXd v(3);
    v << 1.0, -1e-17, 0.5;
    auto s = spectrum_from_eigenvalues(v);
    EXPECT_EQ(s.clipped, 1);
    EXPECT_EQ(s.active, 2);
    EXPECT_EQ(s.eigenvalues[2], 0.0);
}

TEST(Spectrum, DefaultRtolFollowsInputDtype) {
    Eigen::VectorXd v(3);
    v << 1.0, 1e-6, 1e-12;
    SpectrumOptions o;
    o.input_dtype = DType::Float32;
    o.rtol_size = 10;
    auto s32 = spectrum_from_eigenvalues(v, o);
    EXPECT_DOUBLE_EQ(s32.rtol, 10 * double(std::numeric_limits<float>::epsilon()));
    EXPECT_EQ(s32.active, 1);  // 1e-6 < 1.19e-6
    auto s64 = spectrum_from_eigenvalues(v);
    EXPECT_EQ(s64.active, 3);
}

TEST(Spectrum, AllZeroMatrixHasEmptyActiveSet) {
    Eigen::MatrixXd z = Eigen::MatrixXd::Zero(3, 3);
    auto s = spectrum(TensorView::cpu(z));
    EXPECT_EQ(s.active, 0);
    EXPECT_EQ(s.structural_zeros, 3);
    EXPECT_EQ(s.logdet_plus, 0.0);
}

TEST(Spectrum, RankDeficientGram) {
    // 3 independent directions in 5 features: 2 structural zeros.
    const RowMatrixXd basis = dtest::make_data(3, 5, 30);
    const RowMatrixXd coef = dtest::make_data(200, 3, 31);
    const RowMatrixXd x = coef * basis;
    auto g = gram(TensorView::cpu(x));
    SpectrumOptions o;
    o.vectors = true;
    auto s = spectrum(TensorView::cpu(g), o);
    EXPECT_EQ(s.active, 3);
    EXPECT_EQ(s.structural_zeros, 2);
    ASSERT_EQ(s.eigenvectors.cols(), 5);
    const Eigen::MatrixXd gm = g;
    EXPECT_LT((gm * s.eigenvectors.col(0) - s.eigenvalues[0] * s.eigenvectors.col(0)).norm(), 1e-9);
}

TEST(Spectrum, RejectsAsymmetricAndBadOptions) {
    Eigen::MatrixXd a(2, 2);
    a << 1, 2, 0, 1;
    try {
        spectrum(TensorView::cpu(a));
        FAIL();
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("must be symmetric"), std::string::npos);
    }
    Eigen::VectorXd v(2);
    v << 1, 0.5;
    SpectrumOptions o;
    o.gap_ratio = 0.5;
    EXPECT_THROW(spectrum_from_eigenvalues(v, o), std::invalid_argument);
    EXPECT_THROW(spectrum_from_eigenvalues(Eigen::VectorXd(), {}), std::invalid_argument);
}

TEST(LogdetTop, FixedActiveSet) {
    Eigen::VectorXd v(3);
    v << 3.0, 2.0, 0.0;
    EXPECT_NEAR(logdet_top(v, 2), std::log(6.0), 1e-15);
    EXPECT_THROW(logdet_top(v, 3), std::invalid_argument);
    EXPECT_THROW(logdet_top(v, 4), std::invalid_argument);
}
