// SPDX-License-Identifier: Apache-2.0
// Tests of the fused DDCAdam block step.
#include <gtest/gtest.h>

#include <cmath>

#include "deadspec/deadspec.hpp"
#include "test_util.hpp"

using namespace deadspec;

TEST(DdcAdam, MatchesTheFormulaAndIsEquivariantUnderRowScaling) {
    // Row scaling of the block by c with σ = ρ·c: the invariant coordinates do not move, so the
    // update of the scaled block is the scaled update (the defining property of DDCAdam).
    const RowMatrixXd x0 = dtest::make_data(4, 3, 40), g0 = dtest::make_data(4, 3, 41);
    Eigen::VectorXd rho(4), c(4);
    rho << 1.0, 2.0, 0.5, 3.0;
    c << 2.0, 0.25, 1.5, 4.0;
    RowMatrixXd x = x0, m = RowMatrixXd::Zero(4, 3), v = m;
    RowMatrixXd xs = c.asDiagonal() * x0, ms = m, vs = m;
    const RowMatrixXd gs = c.cwiseInverse().asDiagonal() * g0;  // gradients scale inversely
    RowMatrixXd sigma(4, 3), sigma_s(4, 3);
    for (int i = 0; i < 4; ++i) {
        sigma.row(i).setConstant(rho[i]);
        sigma_s.row(i).setConstant(rho[i] * c[i]);
    }
    AdamStep hp{1e-2, 0.9, 0.99, 1e-8, 1};
    ddc_adam_update(TensorView::cpu(x), TensorView::cpu(g0), TensorView::cpu(m), TensorView::cpu(v),
                    TensorView::cpu(sigma), hp);
    ddc_adam_update(TensorView::cpu(xs), TensorView::cpu(gs), TensorView::cpu(ms),
                    TensorView::cpu(vs), TensorView::cpu(sigma_s), hp);
    EXPECT_LT((c.asDiagonal() * x - xs).cwiseAbs().maxCoeff(), 1e-14);
    EXPECT_LT((m - ms).cwiseAbs().maxCoeff(), 1e-14);
    // First step of Adam: m = (1-β1) g̃, v = (1-β2) g̃², update = lr · sign(g̃) · σ (eps aside).
    const double gt = g0(1, 2) * sigma(1, 2);
    EXPECT_NEAR(m(1, 2), 0.1 * gt, 1e-15);
    EXPECT_NEAR(x(1, 2), x0(1, 2) - 1e-2 * (gt > 0 ? 1 : -1) * sigma(1, 2), 1e-9);
}

TEST(DdcAdam, RejectsBadInput) {
    RowMatrixXd x = RowMatrixXd::Zero(2, 2), y = x;
    const TensorView none{};
    AdamStep hp;
    hp.step = 0;
    EXPECT_THROW(ddc_adam_update(TensorView::cpu(x), TensorView::cpu(y), TensorView::cpu(y),
                                 TensorView::cpu(y), none, hp),
                 std::invalid_argument);
    hp.step = 1;
    auto ro = TensorView::cpu(x);
    ro.read_only = true;
    EXPECT_THROW(ddc_adam_update(ro, TensorView::cpu(y), TensorView::cpu(y), TensorView::cpu(y),
                                 none, hp),
                 std::invalid_argument);
    std::vector<double> three(3);
    EXPECT_THROW(ddc_adam_update(TensorView::cpu(x), TensorView::cpu(three.data(), {3}),
                                 TensorView::cpu(y), TensorView::cpu(y), none, hp),
                 std::invalid_argument);
}

TEST(DdcKernels, RowNormsAndGaugeDotsMatchDefinitions) {
    const RowMatrixXd w = dtest::make_data(6, 4, 50), g = dtest::make_data(6, 4, 51);
    Eigen::VectorXd c(4), b(6);
    c << 0.5, 2.0, 1.0, 3.0;
    b.setLinSpaced(6, -1.0, 1.0);
    const auto rho = ddc_row_norms(TensorView::cpu(w), TensorView::cpu(c.data(), {4}),
                                   TensorView::cpu(b.data(), {6}));
    for (int i = 0; i < 6; ++i) {
        const double expect =
            std::sqrt((w.row(i).transpose().cwiseProduct(c)).squaredNorm() + b[i] * b[i]);
        EXPECT_NEAR(rho[i], expect, 1e-14) << "row " << i;
    }
    const RowMatrixXd p = w.cwiseProduct(g);
    const auto [rs, ra] = ddc_gauge_dots(TensorView::cpu(w), TensorView::cpu(g), 1);
    const auto [cs, ca] = ddc_gauge_dots(TensorView::cpu(w), TensorView::cpu(g), 0);
    EXPECT_LT((rs - p.rowwise().sum()).cwiseAbs().maxCoeff(), 1e-14);
    EXPECT_LT((ra - p.cwiseAbs().rowwise().sum()).cwiseAbs().maxCoeff(), 1e-14);
    EXPECT_LT((cs - p.colwise().sum().transpose()).cwiseAbs().maxCoeff(), 1e-14);
    EXPECT_LT((ca - p.cwiseAbs().colwise().sum().transpose()).cwiseAbs().maxCoeff(), 1e-14);
    EXPECT_THROW(ddc_gauge_dots(TensorView::cpu(w), TensorView::cpu(g), 2), std::invalid_argument);
}

TEST(DdcKernels, ColumnSumsAreThreadedDeterministically) {
    // Above the threading threshold the column sums combine per-thread partials in a fixed order.
    const RowMatrixXd w = dtest::make_data(1024, 300, 52), g = dtest::make_data(1024, 300, 53);
    const auto a = ddc_gauge_dots(TensorView::cpu(w), TensorView::cpu(g), 0);
    const auto b = ddc_gauge_dots(TensorView::cpu(w), TensorView::cpu(g), 0);
    EXPECT_EQ((a.first - b.first).cwiseAbs().maxCoeff(), 0.0);
    EXPECT_LT((a.first - w.cwiseProduct(g).colwise().sum().transpose()).cwiseAbs().maxCoeff(), 1e-10);
}

TEST(DdcAdam, ManyBlocksEqualOneByOneAndValidateFirst) {
    // Batched: the same result as stepping each block alone (row and column scales, decay, a
    // 1-D block), and a bad block anywhere leaves every block unwritten.
    const RowMatrixXd x0 = dtest::make_data(300, 150, 50), g0 = dtest::make_data(300, 150, 51);
    Eigen::VectorXd row = Eigen::VectorXd::LinSpaced(300, 0.5, 2.0);
    Eigen::VectorXd col = Eigen::VectorXd::LinSpaced(150, 1.5, 0.25);
    Eigen::VectorXd b0 = Eigen::VectorXd::LinSpaced(7, -1.0, 1.0), gb = b0.reverse();
    AdamStep hp{1e-2, 0.9, 0.99, 1e-8, 3, 0.95};
    auto row_view = TensorView::cpu(row.data(), {300, 150});
    row_view.strides = {1, 0};
    RowMatrixXd xa = x0, ma = RowMatrixXd::Constant(300, 150, 0.1), va = ma;
    Eigen::VectorXd ba = b0, mba = Eigen::VectorXd::Zero(7), vba = mba;
    ddc_adam_update(TensorView::cpu(xa), TensorView::cpu(g0), TensorView::cpu(ma),
                    TensorView::cpu(va), row_view, TensorView::cpu(col.data(), {150}), hp);
    ddc_adam_update(TensorView::cpu(ba.data(), {7}), TensorView::cpu(gb.data(), {7}),
                    TensorView::cpu(mba.data(), {7}), TensorView::cpu(vba.data(), {7}),
                    TensorView{}, hp);
    RowMatrixXd xb = x0, mb = RowMatrixXd::Constant(300, 150, 0.1), vb = mb;
    Eigen::VectorXd bb = b0, mbb = Eigen::VectorXd::Zero(7), vbb = mbb;
    std::vector<AdamBlock> blocks{
        {TensorView::cpu(xb), TensorView::cpu(g0), TensorView::cpu(mb), TensorView::cpu(vb),
         row_view, TensorView::cpu(col.data(), {150}), hp, -1, {}},
        {TensorView::cpu(bb.data(), {7}), TensorView::cpu(gb.data(), {7}),
         TensorView::cpu(mbb.data(), {7}), TensorView::cpu(vbb.data(), {7}), TensorView{},
         TensorView{}, hp, -1, {}}};
    ddc_adam_update_many(blocks);
    EXPECT_EQ((xa - xb).cwiseAbs().maxCoeff(), 0.0);
    EXPECT_EQ((va - vb).cwiseAbs().maxCoeff(), 0.0);
    EXPECT_EQ((ba - bb).cwiseAbs().maxCoeff(), 0.0);
    EXPECT_GT((xa - x0).cwiseAbs().maxCoeff(), 1e-3);

    const RowMatrixXd before = xb;
    blocks[1].hp.eps = -1.0;  // invalid: the first block must not be written either
    EXPECT_THROW(ddc_adam_update_many(blocks), std::invalid_argument);
    EXPECT_EQ((xb - before).cwiseAbs().maxCoeff(), 0.0);
}

TEST(DdcSplit, OneProducerBlockStepsTangentiallyAndRadially) {
    // A 3×4 producer block with σ = ρ per row (unit x̃ rows): pass 0 gives ĝ and ‖x̃‖² = 1, pass
    // 1 the moments on g̃ − ĝ·x̃, pass 2 with the update's own coefficients applies a step whose
    // additive part is orthogonal to each row, on top of the radial factor.
    RowMatrixXd x = dtest::make_data(3, 4, 50);
    const RowMatrixXd g = dtest::make_data(3, 4, 51), x0 = x;
    const Eigen::VectorXd rho = x.rowwise().norm();
    RowMatrixXd m = RowMatrixXd::Zero(3, 4), v = m;
    SplitBlock b;
    b.param = TensorView::cpu(x);
    b.grad = TensorView::cpu(g);
    b.exp_avg = TensorView::cpu(m);
    b.exp_avg_sq = TensorView::cpu(v);
    b.row_scale = TensorView::cpu(rho.data(), {3});
    b.hp = AdamStep{1e-2, 0.9, 0.99, 1e-8, 1};
    const SplitSums s = ddc_split_sums({b}).front();
    for (int i = 0; i < 3; ++i) {
        EXPECT_NEAR(s.row_xx[i], 1.0, 1e-14);
        EXPECT_NEAR(s.row_gx[i], g.row(i).dot(x0.row(i)), 1e-14);
    }
    Eigen::VectorXd a = s.row_gx;  // ĝ/‖x̃‖² with ‖x̃‖ = 1
    b.row_coef = TensorView::cpu(a.data(), {3});
    const auto dots = ddc_split_moments({b}).front();
    // the moments' input is tangential: m ⟂ x̃ per row
    for (int i = 0; i < 3; ++i) EXPECT_NEAR(m.row(i).dot(x0.row(i)) / rho[i], 0.0, 1e-15);
    Eigen::VectorXd au = dots.first;  // the update's radial parts, re-projected out below
    Eigen::VectorXd mult(3);
    mult << 1.5, 1.0, 0.5;
    b.row_coef = TensorView::cpu(au.data(), {3});
    b.row_mult = TensorView::cpu(mult.data(), {3});
    ddc_split_apply({b});
    for (int i = 0; i < 3; ++i) {
        const Eigen::RowVectorXd add = x.row(i) - mult[i] * x0.row(i);
        EXPECT_NEAR(add.dot(x0.row(i)), 0.0, 1e-15);
        EXPECT_GT(add.norm(), 1e-4);
    }
}

TEST(DdcSplit, RejectsBadInput) {
    RowMatrixXd x = RowMatrixXd::Ones(2, 3), g = x, m = RowMatrixXd::Zero(2, 3), v = m;
    std::vector<double> two(2, 1.0), three(3, 1.0);
    SplitBlock b;
    b.param = TensorView::cpu(x);
    b.grad = TensorView::cpu(g);
    b.exp_avg = TensorView::cpu(m);
    b.exp_avg_sq = TensorView::cpu(v);
    b.row_coef = TensorView::cpu(three.data(), {3});  // a row vector of the wrong length
    EXPECT_THROW(ddc_split_moments({b}), std::invalid_argument);
    b.row_coef = TensorView::cpu(two.data(), {2});
    b.col_coef = TensorView::cpu(three.data(), {3});  // both sides: refused
    b.col_norm = TensorView::cpu(three.data(), {3});
    EXPECT_THROW(ddc_split_moments({b}), std::invalid_argument);
    b.row_coef = TensorView{};
    b.col_norm = TensorView{};  // col_coef without col_norm
    EXPECT_THROW(ddc_split_apply({b}), std::invalid_argument);
    EXPECT_EQ(x, RowMatrixXd::Ones(2, 3));  // nothing written
}
