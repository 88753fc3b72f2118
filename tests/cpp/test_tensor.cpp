// SPDX-License-Identifier: Apache-2.0
// Tests of TensorView and the validation path.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "deadspec/deadspec.hpp"
#include "test_util.hpp"

using namespace deadspec;

TEST(TensorView, ContiguityAndStrides) {
    std::vector<double> a(12);
    auto v = TensorView::cpu(a.data(), {3, 4});
    EXPECT_TRUE(v.is_contiguous());
    EXPECT_EQ(v.stride(0), 4);
    EXPECT_EQ(v.stride(1), 1);
    EXPECT_EQ(v.numel(), 12);
    EXPECT_EQ(v.shape_string(), "(3, 4)");
    v.strides = {1, 3};  // a transposed view
    EXPECT_FALSE(v.is_contiguous());
}

TEST(TensorView, StridedInputGivesTheSameGramAsContiguous) {
    // A column-major matrix passed with explicit strides.
    Eigen::MatrixXd col = dtest::make_data(7, 3, 1);
    RowMatrixXd row = col;
    auto g1 = gram(TensorView::cpu(col));
    auto g2 = gram(TensorView::cpu(row));
    EXPECT_LT((g1 - g2).cwiseAbs().maxCoeff(), 1e-14);
}

TEST(TensorView, RejectsIntegerDtype) {
    std::vector<std::int64_t> a(6, 1);
    TensorView v;
    v.data = a.data();
    v.dtype = DType::Int64;
    v.shape = {3, 2};
    try {
        gram(v);
        FAIL() << "expected DTypeError";
    } catch (const DTypeError& e) {
        EXPECT_NE(std::string(e.what()).find("must be float32 or float64, got int64"), std::string::npos)
            << e.what();
    }
}

TEST(TensorView, RejectsCudaWithBuiltWithoutCuda) {
    std::vector<double> a(6, 1.0);
    auto v = TensorView::cpu(a.data(), {3, 2});
    v.device = {DeviceType::Cuda, 0};
    try {
        gram(v);
        FAIL() << "expected DeviceError";
    } catch (const DeviceError& e) {
        EXPECT_NE(std::string(e.what()).find("built without CUDA"), std::string::npos) << e.what();
    }
}

TEST(TensorView, RejectsNanAndInfAndEmpty) {
    std::vector<double> a(6, 1.0);
    a[4] = std::numeric_limits<double>::quiet_NaN();
    EXPECT_THROW(gram(TensorView::cpu(a.data(), {3, 2})), std::invalid_argument);
    a[4] = std::numeric_limits<double>::infinity();
    EXPECT_THROW(gram(TensorView::cpu(a.data(), {3, 2})), std::invalid_argument);
    EXPECT_THROW(gram(TensorView::cpu(a.data(), {0, 2})), std::invalid_argument);
}

TEST(TensorView, FloatInputIsAccumulatedInDouble) {
    RowMatrixXd d = dtest::make_data(50, 4, 2);
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> f = d.cast<float>();
    RowMatrixXd df = f.cast<double>();
    auto gf = gram(TensorView::cpu(f));
    auto gd = gram(TensorView::cpu(df));
    EXPECT_LT((gf - gd).cwiseAbs().maxCoeff(), 1e-12);
}

TEST(DType, Eps) {
    EXPECT_DOUBLE_EQ(dtype_eps(DType::Float64), std::numeric_limits<double>::epsilon());
    EXPECT_DOUBLE_EQ(dtype_eps(DType::Float32), double(std::numeric_limits<float>::epsilon()));
    EXPECT_THROW(dtype_eps(DType::Int32), DTypeError);
}
