// SPDX-License-Identifier: Apache-2.0
// Tests of the OLS and Theil–Sen line fits.
#include <gtest/gtest.h>

#include <cmath>

#include "deadspec/deadspec.hpp"

using namespace deadspec;

TEST(FitSlope, ExactLine) {
    std::vector<double> x = {-3, -2, -1, 0}, y;
    for (double v : x) y.push_back(2.0 * v + 1.0);
    for (auto m : {SlopeMethod::OLS, SlopeMethod::TheilSen}) {
        auto f = fit_slope(x, y, m);
        EXPECT_NEAR(f.slope, 2.0, 1e-14);
        EXPECT_NEAR(f.intercept, 1.0, 1e-14);
        EXPECT_NEAR(f.r2, 1.0, 1e-14);
        EXPECT_NEAR(f.std_error, 0.0, 1e-12);
        EXPECT_EQ(f.n, 4);
    }
}

TEST(FitSlope, OlsStandardErrorMatchesFormula) {
    std::vector<double> x = {0, 1, 2, 3, 4}, y = {0.1, 0.9, 2.2, 2.8, 4.1};
    auto f = fit_slope(x, y);
    // Hand computation: sxx = 10, slope = 0.99, residual SS = 0.107
    EXPECT_NEAR(f.slope, 0.99, 1e-12);
    EXPECT_NEAR(f.std_error, std::sqrt(0.107 / 3.0 / 10.0), 1e-12);
}

TEST(FitSlope, TheilSenIgnoresAnOutlier) {
    std::vector<double> x = {0, 1, 2, 3, 4, 5, 6}, y = {0, 2, 4, 6, 8, 10, 100};
    EXPECT_NEAR(fit_slope(x, y, SlopeMethod::TheilSen).slope, 2.0, 1e-12);
    EXPECT_GT(fit_slope(x, y, SlopeMethod::OLS).slope, 5.0);
}

TEST(FitSlope, Errors) {
    EXPECT_THROW(fit_slope({1.0}, {1.0}), std::invalid_argument);
    EXPECT_THROW(fit_slope({1.0, 2.0}, {1.0}), std::invalid_argument);
    EXPECT_THROW(fit_slope({1.0, 1.0}, {1.0, 2.0}), std::invalid_argument);
    EXPECT_THROW(fit_slope({1.0, NAN}, {1.0, 2.0}), std::invalid_argument);
    EXPECT_TRUE(std::isnan(fit_slope({1.0, 2.0}, {1.0, 2.0}).std_error));
}
