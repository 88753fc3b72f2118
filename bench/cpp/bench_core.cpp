// SPDX-License-Identifier: Apache-2.0
// Google Benchmark timings of the C++ core: Gram, Fisher-Gram, symmetric eigensolver.
#include <benchmark/benchmark.h>

#include <random>

#include "deadspec/deadspec.hpp"

namespace {

deadspec::RowMatrixXd make_data(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<double> dist;
    deadspec::RowMatrixXd m(rows, cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = dist(gen);
    return m;
}

void BM_Gram(benchmark::State& state) {
    const auto n = state.range(0), h = state.range(1);
    const auto x = make_data(n, h, 1);
    for (auto _ : state) benchmark::DoNotOptimize(deadspec::gram(deadspec::TensorView::cpu(x)));
    state.counters["gflops"] = benchmark::Counter(double(n) * double(h) * double(h),
                                                  benchmark::Counter::kIsIterationInvariantRate,
                                                  benchmark::Counter::kIs1000);
    state.SetLabel("float64 feature side");
}

void BM_FisherGram(benchmark::State& state) {
    const auto n = state.range(0), t = state.range(1), d = state.range(2);
    const auto a = make_data(n * t, d, 2), g = make_data(n * t, d, 3);
    const auto va = t == 1 ? deadspec::TensorView::cpu(a.data(), {n, d})
                           : deadspec::TensorView::cpu(a.data(), {n, t, d});
    const auto vg = t == 1 ? deadspec::TensorView::cpu(g.data(), {n, d})
                           : deadspec::TensorView::cpu(g.data(), {n, t, d});
    for (auto _ : state) benchmark::DoNotOptimize(deadspec::fisher_gram(va, vg));
    state.SetLabel(deadspec::resolve_fisher_route(n, t, d, d, deadspec::FisherRoute::Auto) ==
                           deadspec::FisherRoute::Materialize
                       ? "materialize"
                       : "block-sum");
}

void BM_SymEig(benchmark::State& state) {
    const auto d = state.range(0);
    const bool vectors = state.range(1) != 0;
    const auto x = make_data(d + 8, d, 4);
    const Eigen::MatrixXd a = x.transpose() * x;
    for (auto _ : state) benchmark::DoNotOptimize(deadspec::sym_eig(a, vectors));
    state.SetLabel(deadspec::eig_backend() + (vectors ? " values+vectors" : " values"));
}

}  // namespace

BENCHMARK(BM_Gram)->Args({2048, 256})->Args({8192, 1024})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_FisherGram)->Args({256, 1, 512})->Args({1024, 1, 512})->Args({256, 16, 512})
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_SymEig)->ArgsProduct({{256, 1024}, {0, 1}})->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
