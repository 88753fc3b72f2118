// SPDX-License-Identifier: Apache-2.0
// Tests of the symmetric eigensolver (residuals, order, backend).
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include <Eigen/Eigenvalues>

#include "deadspec/deadspec.hpp"
#include "test_util.hpp"

using namespace deadspec;

TEST(SymEig, ResidualAndDescendingOrder) {
    for (Eigen::Index d : {1, 2, 17, 64, 300}) {  // 300: the LAPACK path (> 256)
        const RowMatrixXd x = dtest::make_data(d + 3, d, 20 + unsigned(d));
        const Eigen::MatrixXd a = x.transpose() * x;
        auto r = sym_eig(a, true);
        ASSERT_EQ(r.status, EigStatus::Success);
        ASSERT_EQ(r.values.size(), d);
        for (Eigen::Index i = 1; i < d; ++i) EXPECT_GE(r.values[i - 1], r.values[i]);
        const double res = (a * r.vectors - r.vectors * r.values.asDiagonal()).cwiseAbs().maxCoeff();
        EXPECT_LT(res, 1e-10 * std::max(1.0, r.values[0])) << "d=" << d;
        const double orth = (r.vectors.transpose() * r.vectors -
                             Eigen::MatrixXd::Identity(d, d)).cwiseAbs().maxCoeff();
        EXPECT_LT(orth, 1e-10) << "d=" << d;
    }
}

TEST(SymEig, MatchesEigenSelfAdjointSolver) {
    const RowMatrixXd x = dtest::make_data(40, 30, 21);
    const Eigen::MatrixXd a = x.transpose() * x;
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> ref(a, Eigen::EigenvaluesOnly);
    auto r = sym_eig(a, false);
    EXPECT_EQ(r.vectors.size(), 0);
    EXPECT_LT((r.values - ref.eigenvalues().reverse()).cwiseAbs().maxCoeff(), 1e-9);
    EXPECT_FALSE(eig_backend().empty());
}

TEST(SymEig, RejectsNonSquare) {
    std::vector<double> a(6, 1.0);
    try {
        sym_eig(TensorView::cpu(a.data(), {2, 3}));
        FAIL();
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find("must be a square matrix, got shape (2, 3)"),
                  std::string::npos);
    }
}

TEST(SymEig, ReadsTheLowerTriangleOfARowMajorView) {
    // Garbage above the diagonal must be ignored, garbage below it must not.
    RowMatrixXd a = RowMatrixXd::Zero(3, 3);
    a.diagonal() << 3.0, 2.0, 1.0;
    a(0, 2) = 100.0;
    auto r = sym_eig(TensorView::cpu(a));
    EXPECT_NEAR(r.values[0], 3.0, 1e-12);
    EXPECT_NEAR(r.values[2], 1.0, 1e-12);
    a(0, 2) = 0.0;
    a(2, 0) = 100.0;
    EXPECT_GT(sym_eig(TensorView::cpu(a)).values[0], 100.0);
}

TEST(SymEig, TwoStageValuesMatchDsyevdForAnyThreadCount) {
    // DEADSPEC_EIG_BAND_KD forces the two-stage path (cpp/src/band_tridiag.cpp) at small n with
    // a given band width; "0" turns it off (LAPACK's dsyevd, the reference). The Eigen-matrix
    // overload hands over the lower triangle, which the path mirrors into the upper one.
    if (std::string(DEADSPEC_LAPACK_BACKEND) == "none") GTEST_SKIP() << "no LAPACK in this build";
    const RowMatrixXd x = dtest::make_data(350, 350, 32);
    const Eigen::MatrixXd a = (x + x.transpose()) / 2.0;
    ::setenv("DEADSPEC_EIG_BAND_KD", "0", 1);
    const Eigen::VectorXd ref = sym_eig(a, false).values;
    const double scale = ref.cwiseAbs().maxCoeff();
    for (const char* kd : {"5", "24"}) {
        ::setenv("DEADSPEC_EIG_BAND_KD", kd, 1);
        std::vector<Eigen::VectorXd> runs;
        for (int threads : {1, 2, 3}) {
            set_num_threads(threads);
            runs.push_back(sym_eig(a, false).values);
            EXPECT_LT((runs.back() - ref).cwiseAbs().maxCoeff(), 1e-13 * scale) << "kd " << kd;
        }
        EXPECT_TRUE(runs[0] == runs[1] && runs[0] == runs[2]) << "kd " << kd;  // bit for bit
    }
    ::unsetenv("DEADSPEC_EIG_BAND_KD");
    set_num_threads_auto();
}
