// SPDX-License-Identifier: Apache-2.0
// Tests of deadspec::DDCAdam: the declared sites, ρ → σ, and the fused step.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "deadspec/deadspec.hpp"
#include "test_util.hpp"

using namespace deadspec;

namespace {

// fc1 (5×3, b1) → fc2 (4×5, b2) → fc3 (2×4), the hidden units of fc1 and fc2 two chained Pairs,
// plus a 3-D block outside every site (stepped flat).
struct Net {
    RowMatrixXd w1, w2, w3;
    Eigen::VectorXd b1, b2, e;

    explicit Net(unsigned seed)
        : w1(dtest::make_data(5, 3, seed)),
          w2(dtest::make_data(4, 5, seed + 1)),
          w3(dtest::make_data(2, 4, seed + 2)),
          b1(dtest::make_data(5, 1, seed + 3).col(0)),
          b2(dtest::make_data(4, 1, seed + 4).col(0)),
          e(dtest::make_data(8, 1, seed + 5).col(0)) {}

    std::vector<TensorView> views() const {
        return {TensorView::cpu(w1), TensorView::cpu(b1.data(), {5}), TensorView::cpu(w2),
                TensorView::cpu(b2.data(), {4}), TensorView::cpu(w3),
                TensorView::cpu(e.data(), {2, 2, 2})};
    }
    std::vector<GaugeSite> sites() const {
        const auto v = views();
        return {GaugeSite{v[0], v[1], {v[2]}, {}, "fc1"}, GaugeSite{v[2], v[3], {v[4]}, {}, "fc2"}};
    }
};

// The gradients of one step (a Net's fields used as gradients).
Net grads_at(int step) { return Net(static_cast<unsigned>(100 + 10 * step)); }

double max_abs(const RowMatrixXd& a) { return a.cwiseAbs().maxCoeff(); }

// `f()` throws E with `reason` in its message.
template <typename E, typename F>
void expect_throw(F&& f, const char* reason) {
    try {
        f();
        ADD_FAILURE() << "no exception; expected: " << reason;
    } catch (const E& e) {
        EXPECT_NE(std::string(e.what()).find(reason), std::string::npos) << e.what();
    }
}

TensorView broadcast_rows(const Eigen::VectorXd& rho, std::int64_t cols) {
    TensorView v = TensorView::cpu(rho.data(), {rho.size()});
    v.shape = {rho.size(), cols};
    v.strides = {1, 0};
    return v;
}

}  // namespace

TEST(DdcAdamClass, EqualsThePerBlockCalls) {
    // The reference: ρ of the decayed producers by ddc_row_norms in chain order, then one
    // ddc_adam_update per block with σ = ρ_row / ρ_col.
    Net a(1), ref(1);
    DDCAdamOptions opt;
    opt.lr = 1e-2;
    opt.weight_decay = 0.1;
    DDCAdam ddc(a.views(), a.sites(), opt);
    std::vector<RowMatrixXd> m, v;
    for (const TensorView& t : ref.views()) {
        m.push_back(RowMatrixXd::Zero(t.numel(), 1));
        v.push_back(RowMatrixXd::Zero(t.numel(), 1));
    }
    const double decay = 1.0 - opt.lr * opt.weight_decay;
    const TensorView none{};
    for (int t = 1; t <= 3; ++t) {
        const Net g = grads_at(t);
        ASSERT_TRUE(ddc.step(g.views()));
        const auto p = ref.views();
        const auto gv = g.views();
        const Eigen::VectorXd r1 = ddc_row_norms(p[0], none, p[1], decay, decay);
        const Eigen::VectorXd r2 =
            ddc_row_norms(p[2], TensorView::cpu(r1.data(), {5}), p[3], decay, decay);
        const Eigen::VectorXd i1 = r1.cwiseInverse(), i2 = r2.cwiseInverse();
        const TensorView row[] = {broadcast_rows(r1, 3), TensorView::cpu(r1.data(), {5}),
                                  broadcast_rows(r2, 5), TensorView::cpu(r2.data(), {4}), none,
                                  none};
        const TensorView col[] = {none, none, TensorView::cpu(i1.data(), {5}), none,
                                  TensorView::cpu(i2.data(), {4}), none};
        const AdamStep hp{opt.lr, opt.beta1, opt.beta2, opt.eps, t, decay};
        for (std::size_t k = 0; k < p.size(); ++k) {
            TensorView pk = p[k], gk = gv[k];
            if (k == 5) pk.shape = gk.shape = {8};
            TensorView mk = TensorView::cpu(m[k].data(), pk.shape);
            TensorView vk = TensorView::cpu(v[k].data(), pk.shape);
            ddc_adam_update(pk, gk, mk, vk, row[k], col[k], hp);
        }
    }
    EXPECT_EQ(a.w1, ref.w1);
    EXPECT_EQ(a.b1, ref.b1);
    EXPECT_EQ(a.w2, ref.w2);
    EXPECT_EQ(a.b2, ref.b2);
    EXPECT_EQ(a.w3, ref.w3);
    EXPECT_EQ(a.e, ref.e);
    const TensorView m2 = ddc.exp_avg(2);
    EXPECT_EQ(m2.shape, (std::vector<std::int64_t>{4, 5}));
    const double* pm2 = static_cast<const double*>(m2.data);
    for (int k = 0; k < 20; ++k) EXPECT_EQ(pm2[k], m[2](k, 0));
    EXPECT_EQ(ddc.steps(4), 3);
    EXPECT_GT(max_abs(a.w1 - Net(1).w1), 1e-3);  // the step moved the parameters
}

TEST(DdcAdamClass, IsEquivariantUnderTheDeclaredPairs) {
    // Scale the hidden units of fc1 by c and those of fc2 by d (the chained Pairs' group):
    // W1 ↦ D_c W1, b1 ↦ c⊙b1, W2 ↦ D_d W2 D_c⁻¹, b2 ↦ d⊙b2, W3 ↦ W3 D_d⁻¹; the gradients move
    // contragrediently. DDCAdam's trajectory from the scaled start is the scaled trajectory.
    Eigen::VectorXd c(5), d(4);
    c << 3.0, 0.2, 1.7, 0.05, 11.0;
    d << 0.4, 6.0, 1.0, 0.125;
    const auto act = [&](Net& n) {
        n.w1 = c.asDiagonal() * n.w1;
        n.b1 = c.cwiseProduct(n.b1);
        n.w2 = d.asDiagonal() * n.w2 * c.cwiseInverse().asDiagonal();
        n.b2 = d.cwiseProduct(n.b2);
        n.w3 = n.w3 * d.cwiseInverse().asDiagonal();
    };
    const auto act_grads = [&](Net& g) {
        g.w1 = c.cwiseInverse().asDiagonal() * g.w1;
        g.b1 = g.b1.cwiseQuotient(c);
        g.w2 = d.cwiseInverse().asDiagonal() * g.w2 * c.asDiagonal();
        g.b2 = g.b2.cwiseQuotient(d);
        g.w3 = g.w3 * d.asDiagonal();
    };
    DDCAdamOptions opt;
    opt.lr = 1e-2;
    opt.weight_decay = 0.05;
    for (const bool gauged : {true, false}) {
        Net x(7), y(7);
        act(y);
        const Net x0 = x;
        DDCAdam ox(x.views(), gauged ? x.sites() : std::vector<GaugeSite>{}, opt);
        DDCAdam oy(y.views(), gauged ? y.sites() : std::vector<GaugeSite>{}, opt);
        for (int t = 1; t <= 5; ++t) {
            Net gx = grads_at(t), gy = grads_at(t);
            act_grads(gy);
            ox.step(gx.views());
            oy.step(gy.views());
        }
        Net back = x;
        act(back);  // the scaled image of the unscaled trajectory
        const double err = std::max({max_abs(back.w1 - y.w1), max_abs(back.w2 - y.w2),
                                     max_abs(back.w3 - y.w3), max_abs(back.b1 - y.b1),
                                     max_abs(back.b2 - y.b2), max_abs(x.e - y.e)});
        if (gauged) {
            EXPECT_LT(err, 1e-12);
            EXPECT_GT(max_abs(x.w2 - x0.w2), 1e-3);
        } else {
            EXPECT_GT(err, 1e-3);  // plain Adam (no sites) is not equivariant: the test can fail
        }
    }
}

TEST(DdcAdamClass, NormSiteIsEquivariant) {
    // A NormScale: (γ_i, β_i) ×c_i and the consumer's columns ÷c_i; γ is a 1-D producer.
    Eigen::VectorXd c(4);
    c << 0.3, 2.0, 5.0, 1.1;
    std::vector<Eigen::VectorXd> gammas, betas;
    std::vector<RowMatrixXd> ws;
    for (const bool scaled : {false, true}) {
        Eigen::VectorXd gamma = dtest::make_data(4, 1, 60).col(0);
        Eigen::VectorXd beta = dtest::make_data(4, 1, 61).col(0);
        RowMatrixXd w = dtest::make_data(3, 4, 62);
        if (scaled) {
            gamma = c.cwiseProduct(gamma);
            beta = c.cwiseProduct(beta);
            w = w * c.cwiseInverse().asDiagonal();
        }
        const TensorView pg = TensorView::cpu(gamma.data(), {4});
        const TensorView pb = TensorView::cpu(beta.data(), {4});
        const TensorView pw = TensorView::cpu(w);
        DDCAdam opt({pg, pb, pw}, {GaugeSite{pg, pb, {pw}, {}, "ln"}});
        for (int t = 1; t <= 4; ++t) {
            Eigen::VectorXd gg = dtest::make_data(4, 1, 70 + t).col(0);
            Eigen::VectorXd gb = dtest::make_data(4, 1, 80 + t).col(0);
            RowMatrixXd gw = dtest::make_data(3, 4, 90 + t);
            if (scaled) {
                gg = gg.cwiseQuotient(c);
                gb = gb.cwiseQuotient(c);
                gw = gw * c.asDiagonal();
            }
            opt.step({TensorView::cpu(gg.data(), {4}), TensorView::cpu(gb.data(), {4}),
                      TensorView::cpu(gw)});
        }
        gammas.push_back(gamma);
        betas.push_back(beta);
        ws.push_back(w);
    }
    // the unscaled trajectory, scaled, is the scaled one
    EXPECT_LT((c.cwiseProduct(gammas[0]) - gammas[1]).cwiseAbs().maxCoeff(), 1e-12);
    EXPECT_LT((c.cwiseProduct(betas[0]) - betas[1]).cwiseAbs().maxCoeff(), 1e-12);
    EXPECT_LT(max_abs(ws[0] * c.cwiseInverse().asDiagonal() - ws[1]), 1e-12);
}

TEST(DdcAdamClass, ScalesFollowTheUnitConvention) {
    // float32 producer: ρ rounded to float; a zero row and a unit outside `units` get ρ = 1.
    std::vector<float> w = {3, 4, 0, 0, 1, 2}, cons = {1, 1, 1};
    const TensorView wv = TensorView::cpu(w.data(), {3, 2});
    const TensorView cv = TensorView::cpu(cons.data(), {1, 3});
    DDCAdam all({wv, cv}, {GaugeSite{wv, {}, {cv}, {}, ""}});
    const Eigen::VectorXd r = all.scales().at(0);
    EXPECT_EQ(r[0], 5.0);
    EXPECT_EQ(r[1], 1.0);
    EXPECT_EQ(r[2], static_cast<double>(std::sqrt(5.0f)));
    DDCAdam some({wv, cv}, {GaugeSite{wv, {}, {cv}, {0, 1}, ""}});
    EXPECT_EQ(some.scales().at(0)[2], 1.0);
    EXPECT_EQ(some.num_sites(), 1u);
    // a row whose norm rounds to float's largest value: 1/(1/ρ) overflows, so ρ = 1 (Python's
    // site_rho and the plan's rule)
    std::vector<float> big = {std::numeric_limits<float>::max(), 0, 3, 4};
    const TensorView bv = TensorView::cpu(big.data(), {2, 2});
    std::vector<float> cons2 = {1, 1};
    const TensorView c2 = TensorView::cpu(cons2.data(), {1, 2});
    const Eigen::VectorXd rb = DDCAdam({bv, c2}, {GaugeSite{bv, {}, {c2}, {}, ""}}).scales().at(0);
    EXPECT_EQ(rb[0], 1.0);
    EXPECT_EQ(rb[1], 5.0);
}

TEST(DdcAdamClass, SkipsParametersWithoutAGradient) {
    Net a(3);
    const Net a0 = a;
    DDCAdam ddc(a.views(), a.sites());
    Net g = grads_at(1);
    auto gv = g.views();
    gv[3] = TensorView{};  // b2 has no gradient this step
    ASSERT_TRUE(ddc.step(gv));
    EXPECT_EQ(a.b2, a0.b2);
    EXPECT_EQ(ddc.steps(3), 0);
    EXPECT_EQ(ddc.steps(2), 1);
    EXPECT_GT(max_abs(a.w2 - a0.w2), 1e-5);
}

TEST(DdcAdamClass, NonFiniteGradientsWriteNothing) {
    Net a(4);
    const Net a0 = a;
    Net g = grads_at(1);
    g.w3(1, 2) = std::numeric_limits<double>::quiet_NaN();
    DDCAdam raising(a.views(), a.sites());
    expect_throw<Error>([&] { raising.step(g.views()); },
                        "deadspec.DDCAdam.step: gradients must be finite, got NaN/Inf in params[4]");
    DDCAdamOptions skip;
    skip.raise_on_nonfinite = false;
    DDCAdam skipping(a.views(), a.sites(), skip);
    EXPECT_FALSE(skipping.step(g.views()));
    EXPECT_EQ(a.w1, a0.w1);
    EXPECT_EQ(a.w3, a0.w3);
    EXPECT_EQ(skipping.steps(0), 0);
}

TEST(DdcAdamClass, RejectsBadDeclarations) {
    Net a(5);
    const auto v = a.views();
    RowMatrixXd other = RowMatrixXd::Ones(4, 5);
    // Each declaration is refused for its own reason (the message names it).
    const auto bad = [&](std::vector<TensorView> params, std::vector<GaugeSite> sites,
                         const char* reason) {
        expect_throw<std::invalid_argument>(
            [&] { DDCAdam opt(std::move(params), std::move(sites)); }, reason);
    };
    bad(v, {GaugeSite{TensorView::cpu(other), v[3], {v[4]}, {}, "x"}}, "must be one of the params");
    bad(v, {GaugeSite{v[0], v[1], {v[4]}, {}, "x"}}, "consumers must be 2-D with 5 columns");
    bad(v, {GaugeSite{v[0], v[3], {v[2]}, {}, "x"}}, "bias must have shape (5,)");
    bad(v, {GaugeSite{v[0], v[1], {v[2]}, {5}, "x"}}, "units must be distinct indices");
    bad(v, {GaugeSite{v[0], v[1], {v[2]}, {1, 1}, "x"}}, "got 1 twice");
    bad(v, {GaugeSite{v[0], v[1], {v[2]}, {}, "a"}, GaugeSite{v[0], {}, {}, {}, "b"}},
        "must not share a producer");
    bad(v, {GaugeSite{v[0], {}, {v[2]}, {}, "a"}, GaugeSite{v[1], {}, {v[2]}, {}, "b"}},
        "must belong to one gauge");
    RowMatrixXd sq = RowMatrixXd::Ones(3, 3);
    const TensorView s = TensorView::cpu(sq);
    bad({s}, {GaugeSite{s, {}, {s}, {}, "loop"}}, "acyclic network, got a cycle through 'loop'");
    DDCAdamOptions o;
    o.weight_decay = -1.0;
    expect_throw<std::invalid_argument>([&] { DDCAdam opt(v, a.sites(), o); },
                                        "weight_decay must be finite and >= 0, got -1");
    DDCAdam ok(v, a.sites());
    expect_throw<std::invalid_argument>([&] { ok.step({v[0]}); },
                                        "grads must have one view per parameter (6), got 1");
    Net g = grads_at(1);
    auto gv = g.views();
    gv[0] = gv[2];  // a gradient of the wrong shape
    expect_throw<std::invalid_argument>([&] { ok.step(gv); },
                                        "grads[0] must have the shape of param (5, 3)");
    o.weight_decay = 0.0;
    o.beta1 = 1.0;
    expect_throw<std::invalid_argument>([&] { ok.set_options(o); }, "betas must be in [0, 1)");
}
