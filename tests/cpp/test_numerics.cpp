// SPDX-License-Identifier: Apache-2.0
// Numerics at the edges of the dtypes (issue #12): no silent NaN/Inf from finite inputs.
// The readings are scale-invariant (spectrum, fit_slope), a result beyond float64 raises
// std::overflow_error (sym_eig, as gram), and a DDC step never writes a non-finite value.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "deadspec/deadspec.hpp"
#include "test_util.hpp"

using namespace deadspec;

namespace {

// Whether `f` throws an E whose message contains `part`.
template <typename E, typename F>
bool throws_with(F&& f, const std::string& part) {
    try {
        f();
    } catch (const E& e) {
        return std::string(e.what()).find(part) != std::string::npos;
    }
    return false;
}

}  // namespace

// -- spectrum: participation ratio and effective rank at any scale -------------------------------

TEST(Numerics, SpectrumReadingsAreScaleInvariant) {
    Eigen::VectorXd mu(4);
    mu << 4.0, 2.0, 1.0, 0.5;
    SpectrumOptions o;
    o.rtol = 1e-3;
    const Spectrum ref = spectrum_from_eigenvalues(mu, o);
    ASSERT_GT(ref.effective_rank, 1.0);
    for (const double scale : {1e300, 1e-300, 4e307, 1e-310}) {
        const Spectrum s = spectrum_from_eigenvalues(mu * scale, o);
        EXPECT_TRUE(std::isfinite(s.participation_ratio) && std::isfinite(s.effective_rank))
            << "scale=" << scale;
        // a power-of-two scale is exact; others round in the last bits only
        EXPECT_NEAR(s.participation_ratio, ref.participation_ratio, 1e-12) << "scale=" << scale;
        EXPECT_NEAR(s.effective_rank, ref.effective_rank, 1e-12) << "scale=" << scale;
        EXPECT_NEAR(s.condition_number, ref.condition_number, 1e-9) << "scale=" << scale;
    }
}

TEST(Numerics, SpectrumWithTinySharesIsFiniteAndConditionOverflowRaises) {
    // rtol = 0 keeps every positive eigenvalue active: a condition number beyond float64 raises
    Eigen::VectorXd mu(3);
    mu << 1e300, 1e-300, 1e-310;
    SpectrumOptions o;
    o.rtol = 0.0;
    EXPECT_TRUE(throws_with<std::overflow_error>([&] { spectrum_from_eigenvalues(mu, o); },
                                                 "condition number"));
    mu << 1e300, 1e-5, 1e-7;  // shares down to 1e-307: Σμ² = 1e600 in the plain formula
    const Spectrum s = spectrum_from_eigenvalues(mu, o);
    EXPECT_TRUE(std::isfinite(s.effective_rank));
    EXPECT_NEAR(s.effective_rank, 1.0, 1e-12);
    EXPECT_NEAR(s.participation_ratio, 1.0, 1e-12);
}

TEST(Numerics, SpectrumOfHugeGramIsFiniteAndOverflowRaises) {
    RowMatrixXd g = RowMatrixXd::Zero(2, 2);
    g(0, 0) = 1.5e308;
    g(1, 1) = 1e307;
    const Spectrum s = spectrum(TensorView::cpu(g));
    EXPECT_TRUE(std::isfinite(s.participation_ratio) && std::isfinite(s.effective_rank));
    EXPECT_NEAR(s.participation_ratio, std::pow(1.6, 2) / (1.5 * 1.5 + 0.01) / 1.0, 1e-12);
    g.setConstant(1e308);  // its eigenvalue 2e308 is beyond float64
    EXPECT_TRUE(throws_with<std::overflow_error>([&] { spectrum(TensorView::cpu(g)); },
                                                 "overflowed float64"));
}

// -- sym_eig: an eigenvalue beyond float64 raises, as gram does -----------------------------------

TEST(Numerics, SymEigOverflowRaisesLikeGram) {
    RowMatrixXd a = RowMatrixXd::Constant(2, 2, 1e308);
    EXPECT_TRUE(throws_with<std::overflow_error>([&] { sym_eig(TensorView::cpu(a)); },
                                                 "deadspec.sym_eig"));
    EXPECT_THROW(gram(TensorView::cpu(a)), std::overflow_error);
    // large but representable: the scaled decomposition
    a = dtest::make_data(5, 5, 7);
    a = (a + a.transpose()).eval();
    const SymEigResult r = sym_eig(TensorView::cpu(a));
    const SymEigResult big = sym_eig(TensorView::cpu(RowMatrixXd(a * 1e300)));
    const SymEigResult tiny = sym_eig(TensorView::cpu(RowMatrixXd(a * 1e-300)));
    for (Eigen::Index i = 0; i < 5; ++i) {
        EXPECT_NEAR(big.values[i] / 1e300, r.values[i], 1e-12 * r.values.cwiseAbs().maxCoeff());
        EXPECT_NEAR(tiny.values[i] / 1e-300, r.values[i], 1e-12 * r.values.cwiseAbs().maxCoeff());
    }
    std::vector<float> f = {3e38f, 3e38f, 3e38f, 3e38f};  // float32 input, float64 result
    const SymEigResult rf = sym_eig(TensorView::cpu(f.data(), {2, 2}));
    EXPECT_TRUE(rf.values.allFinite());
    EXPECT_NEAR(rf.values[0], 6e38, 1e32);
}

// -- fit_slope: centred, scaled data ---------------------------------------------------------------

TEST(Numerics, FitSlopeIsScaleInvariant) {
    const std::vector<double> x = {1.0, 2.0, 3.0, 4.5, 5.0};
    const std::vector<double> y = {2.1, 3.9, 6.2, 8.8, 10.1};
    for (const auto method : {SlopeMethod::OLS, SlopeMethod::TheilSen}) {
        const SlopeFit ref = fit_slope(x, y, method);
        for (const double sx : {1e300, 1e-300, 1e-310}) {
            for (const double sy : {1.0, 1e300, 1e-300}) {
                std::vector<double> xs(x), ys(y);
                for (auto& a : xs) a *= sx;
                for (auto& a : ys) a *= sy;
                if (std::abs(std::log10(sy / sx)) > 300) continue;  // a slope beyond float64
                const SlopeFit f = fit_slope(xs, ys, method);
                const std::string at = "sx=" + std::to_string(sx) + " sy=" + std::to_string(sy);
                EXPECT_NEAR(f.slope / (sy / sx), ref.slope, 1e-9 * std::abs(ref.slope)) << at;
                EXPECT_NEAR(f.intercept / sy, ref.intercept, 1e-9) << at;
                EXPECT_NEAR(f.r2, ref.r2, 1e-12) << at;
                EXPECT_TRUE(std::isfinite(f.std_error)) << at;
            }
        }
    }
    // shifted far from 0 (centring): x ~ 1e300 + small steps cannot be told apart in float64,
    // but a spread of values near ±1.7e308 fits without an overflowing sum
    const std::vector<double> xb = {-1.7e308, -0.5e308, 0.5e308, 1.7e308};
    const SlopeFit fb = fit_slope(xb, xb);
    EXPECT_NEAR(fb.slope, 1.0, 1e-14);
    EXPECT_NEAR(fb.r2, 1.0, 1e-14);
}

TEST(Numerics, FitSlopeOverflowRaises) {
    const std::vector<double> x = {1e-300, 2e-300, 3e-300};
    const std::vector<double> y = {1e300, 2e300, 3e300};
    EXPECT_TRUE(throws_with<std::overflow_error>([&] { fit_slope(x, y); }, "deadspec.fit_slope"));
}

TEST(Numerics, GramAccumulatorRefusesAScatterBeyondMemory) {
    // 10⁸ features: an 8·10¹⁶-byte scatter, refused before anything is allocated
    EXPECT_TRUE(throws_with<std::invalid_argument>([] { GramAccumulator acc(100000000); },
                                                   "within the machine's memory"));
    GramAccumulator ok(16);  // an ordinary one is made
    RowMatrixXd x = dtest::make_data(5, 16, 3);
    ok.add(TensorView::cpu(x));
    EXPECT_EQ(ok.gram().rows(), 16);
}

// -- the DDC step: checked before commit ----------------------------------------------------------

TEST(Numerics, DdcStepKeepsPreStepValuesWhereItOverflows) {
    for (const bool keep : {true, false}) {
        std::vector<float> x = {1.0f, 2.0f, 3.0f, 4.0f}, m(4, 0.0f), v(4, 0.0f);
        // element 1's second moment overflows float32: ((1 − β₂)·g̃)·g̃ = 1e-3·(1e21)²
        const std::vector<float> g = {1.0f, 1e21f, 1e19f, -1.0f};
        AdamBlock b;
        b.param = TensorView::cpu(x.data(), {4});
        b.grad = TensorView::cpu(g.data(), {4});
        b.exp_avg = TensorView::cpu(m.data(), {4});
        b.exp_avg_sq = TensorView::cpu(v.data(), {4});
        b.hp = AdamStep{1e-3, 0.9, 0.999, 1e-8, 1};
        b.keep = keep;
        std::vector<std::int64_t> refused;
        ddc_adam_update_many({b}, refused);
        ASSERT_EQ(refused.size(), 1u);
        EXPECT_EQ(refused[0], 1) << "keep=" << keep;
        // AdamW's order keeps 1e19 finite (g̃² alone would overflow at 1.8e19)
        EXPECT_TRUE(std::isfinite(v[2]) && std::isfinite(x[2]));
        EXPECT_TRUE(std::isfinite(x[0]) && x[0] != 1.0f);  // the others are stepped
        if (keep) {
            EXPECT_EQ(x[1], 2.0f);
            EXPECT_EQ(m[1], 0.0f);
            EXPECT_EQ(v[1], 0.0f);
        } else {
            EXPECT_FALSE(std::isfinite(v[1]));  // written, only counted
        }
    }
}

TEST(Numerics, DdcStepWithoutCountThrowsAfterThePass) {
    RowMatrixXd x = RowMatrixXd::Ones(2, 2), m = RowMatrixXd::Zero(2, 2), v = m;
    RowMatrixXd g = RowMatrixXd::Ones(2, 2);
    g(1, 1) = 1e200;  // (1 − β₂)·g² = 1e397
    EXPECT_TRUE(throws_with<Error>(
        [&] {
            ddc_adam_update(TensorView::cpu(x), TensorView::cpu(g), TensorView::cpu(m),
                            TensorView::cpu(v), TensorView{}, AdamStep{});
        },
        "1 element(s) of block 0"));
    EXPECT_EQ(x(1, 1), 1.0);
    EXPECT_EQ(v(1, 1), 0.0);
    EXPECT_NE(x(0, 0), 1.0);
}

TEST(Numerics, DdcAdamOptimizerAppliesItsPolicyToOverflow) {
    for (const bool raise : {true, false}) {
        std::vector<float> w = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};  // 2×3
        std::vector<float> gw = {1.0f, 1.0f, 1.0f, 1.0f, 1e30f, 1.0f};
        DDCAdamOptions o;
        o.raise_on_nonfinite = raise;
        DDCAdam opt({TensorView::cpu(w.data(), {2, 3})}, {}, o);
        const std::vector<TensorView> grads = {TensorView::cpu(gw.data(), {2, 3})};
        if (raise) {
            EXPECT_TRUE(throws_with<Error>([&] { opt.step(grads); }, "params[0]"));
        } else {
            EXPECT_FALSE(opt.step(grads));
        }
        EXPECT_EQ(w[4], 5.0f);
        EXPECT_NE(w[0], 1.0f);
        const TensorView vs = opt.exp_avg_sq(0);
        EXPECT_EQ(static_cast<const float*>(vs.data)[4], 0.0f);
    }
}

TEST(Numerics, DdcAdamUnitTooLargeForItsScaleIsNotScaled) {
    // A producer row whose norm overflows float32 gets ρ := 1 (AdamW's step), not ρ = Inf.
    std::vector<float> w1 = {3e38f, 3e38f, 1.0f, 2.0f};  // 2×2: row 0's norm is 4.2e38
    std::vector<float> w2 = {1.0f, 1.0f};                 // 1×2 consumer
    const auto v1 = TensorView::cpu(w1.data(), {2, 2}), v2 = TensorView::cpu(w2.data(), {1, 2});
    DDCAdam opt({v1, v2}, {GaugeSite{v1, TensorView{}, {v2}, {}, "fc1"}});
    const auto rho = opt.scales();
    ASSERT_EQ(rho.size(), 1u);
    EXPECT_EQ(rho[0][0], 1.0);
    EXPECT_NEAR(rho[0][1], std::sqrt(5.0), 1e-6);
    std::vector<float> g1 = {1e-3f, 1e-3f, 1e-3f, 1e-3f}, g2 = {1e-3f, 1e-3f};
    EXPECT_TRUE(opt.step({TensorView::cpu(g1.data(), {2, 2}), TensorView::cpu(g2.data(), {1, 2})}));
    for (const float a : w1) EXPECT_TRUE(std::isfinite(a));
    for (const float a : w2) EXPECT_TRUE(std::isfinite(a));
}

TEST(Numerics, SplitMomentsAccumulateInAdamWsOrder) {
    // t = g̃ = 4e19 (float32): t² overflows, ((1 − β₂)·t)·t = 1.6e36 does not.
    std::vector<float> x = {1.0f, 0.0f}, m(2, 0.0f), v(2, 0.0f);
    const std::vector<float> g = {4e19f, 1.0f};
    SplitBlock b;
    b.param = TensorView::cpu(x.data(), {2});
    b.grad = TensorView::cpu(g.data(), {2});
    b.exp_avg = TensorView::cpu(m.data(), {2});
    b.exp_avg_sq = TensorView::cpu(v.data(), {2});
    b.hp = AdamStep{1e-3, 0.9, 0.999, 1e-8, 1};
    std::vector<std::int64_t> refused;
    ddc_split_moments({b}, refused);
    EXPECT_EQ(refused[0], 0);
    EXPECT_TRUE(std::isfinite(v[0]));
    EXPECT_NEAR(v[0] / 1.6e36f, 1.0f, 1e-4f);  // (1 − β₂ rounded to float32)
    ddc_split_apply({b}, refused);
    EXPECT_EQ(refused[0], 0);
    EXPECT_TRUE(std::isfinite(x[0]) && std::isfinite(x[1]));
}

TEST(Numerics, RowNormsAreScaledWhereTheSumOfSquaresOverflows) {
    // Rows of 1e307: Σw² overflows, the norm does not; a row whose norm exceeds float64 is +inf.
    std::vector<double> w = {1e307, 2e307, -3e307,  // norm √14·1e307
                             1.5e308, 1.5e308, 0.0, // norm 2.1e308 > 1.8e308: +inf
                             0.0,   0.0,   0.0,     // zero row, weight factor overflowing: 0
                             3.0,   4.0,   0.0};    // ordinary row: 5, the plain path
    const auto vw = TensorView::cpu(w.data(), {4, 3});
    const Eigen::VectorXd n = ddc_row_norms(vw, TensorView{}, TensorView{});
    EXPECT_NEAR(n[0] / (std::sqrt(14.0) * 1e307), 1.0, 1e-15);
    EXPECT_TRUE(std::isinf(n[1]) && n[1] > 0);
    EXPECT_EQ(n[2], 0.0);
    EXPECT_EQ(n[3], 5.0);
    // factors and column scales far apart: 1e300·1e-300·1e300 per term, no intermediate overflow
    std::vector<double> c = {1e-300, 1e-300, 1e-300}, b = {1e308, 0.0, 0.0, 0.0};
    const Eigen::VectorXd s = ddc_row_norms(vw, TensorView::cpu(c.data(), {3}),
                                            TensorView::cpu(b.data(), {4}), 1e300, 0.5);
    EXPECT_NEAR(s[0] / std::hypot(std::sqrt(14.0) * 1e307, 0.5e308), 1.0, 1e-15);
    EXPECT_NEAR(s[3], 5.0, 1e-14);
    const Eigen::VectorXd z = ddc_row_norms(vw, TensorView{}, TensorView{}, 1e200, 1.0);
    EXPECT_EQ(z[2], 0.0);  // 0 · (1e200)² would be 0·inf = NaN in the plain path
}

TEST(Numerics, SplitBlocksRefuseScalesWithoutAValue) {
    // A row scale that is 0 once read in float32 (1e-300) has no x̃ = x/σ: refused, not NaN.
    std::vector<float> x = {1.0f, 2.0f}, g = {1.0f, 1.0f}, m(2, 0.0f), v(2, 0.0f);
    std::vector<double> rs = {1.0, 1e-300};
    SplitBlock b;
    b.param = TensorView::cpu(x.data(), {2});
    b.grad = TensorView::cpu(g.data(), {2});
    b.exp_avg = TensorView::cpu(m.data(), {2});
    b.exp_avg_sq = TensorView::cpu(v.data(), {2});
    b.row_scale = TensorView::cpu(rs.data(), {2});
    b.hp = AdamStep{1e-3, 0.9, 0.999, 1e-8, 1};
    EXPECT_TRUE(throws_with<std::invalid_argument>([&] { ddc_split_sums({b}); },
                                                   "row_scale must hold positive scales"));
    rs[1] = 0.5;
    EXPECT_NO_THROW(ddc_split_sums({b}));
}
