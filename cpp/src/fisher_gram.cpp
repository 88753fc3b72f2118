// SPDX-License-Identifier: Apache-2.0
// Fisher-Gram of a linear layer from (inputs, output gradients), never materialising all of Γ.
//
// Two exact routes (docs/theory.md; bench/README.md "Sequence Fisher-Gram grid"), both through
// BLAS level 3 on float64 operands, float32 inputs converted in bounded blocks:
//  * block sums: K = Σ_{t,s} (A_t A_sᵀ + β) ∘ (D_t D_sᵀ) / N over position pairs, with A_t the
//    N×d_in slice of position t (a strided view: no re-layout), β = 1 for the bias block;
//  * materialise: Γ formed tile by tile (d_in × d_out columns r × q) by one batched dgemm
//    (Γ_i = A_iᵀ D_i, k = T), each tile folded into K by a triangular Gram (dgemmt/dsyrk).
#include "deadspec/fisher_gram.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>
#include <memory>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "detail/blas3.hpp"
#include "detail/core.hpp"
#include "detail/fisher_seq.hpp"

namespace deadspec {

namespace {

constexpr std::int64_t kMiB = std::int64_t(1) << 20;

// Ask for transparent huge pages on a large buffer before its first touch. Fresh 4 KiB pages cost
// about 1 µs each to fault in on the reference VM (16 MiB of scratch: ~4 ms, a quarter of a
// 256×64×128 Fisher-Gram); with MADV_HUGEPAGE one fault maps 2 MiB.
void advise_huge(void* p, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes < (std::size_t(2) << 20)) return;
    const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
    const auto lo = (reinterpret_cast<std::uintptr_t>(p) + page - 1) / page * page;
    const auto hi = (reinterpret_cast<std::uintptr_t>(p) + bytes) / page * page;
    if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

}  // namespace

namespace detail {

void ScratchFree::operator()(double* p) const {
#if defined(__linux__)
    if (mapped != 0) {
        (void)munmap(p, mapped);
        return;
    }
#endif
    std::free(p);
}

// Buffers of 2 MiB or more are mapped directly, 2 MiB-aligned and whole huge pages: every page
// can be a huge one, and glibc's malloc never sees them. A large malloc'd buffer, once freed,
// raises glibc's mmap threshold to its size: torch's later tensors of that size then came from
// the heap, which kept them resident, and the peak RSS of a capture + fisher_gram loop at
// N = 256, T = 64, d = 128 grew by 8 MiB per iteration up to 91 MiB (50 MiB with 8 MiB tiles).
Scratch fisher_scratch(std::int64_t len) {
    constexpr std::size_t kHuge = std::size_t(2) << 20;
    const std::size_t bytes =
        static_cast<std::size_t>(std::max<std::int64_t>(len, 1)) * sizeof(double);
#if defined(__linux__)
    if (bytes >= kHuge) {
        const std::size_t size = (bytes + kHuge - 1) / kHuge * kHuge;
        void* m = mmap(nullptr, size + kHuge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                       -1, 0);
        if (m == MAP_FAILED) throw std::bad_alloc();
        const auto lo = reinterpret_cast<std::uintptr_t>(m);
        const std::uintptr_t at = (lo + kHuge - 1) / kHuge * kHuge;
        if (at > lo) (void)munmap(m, at - lo);
        if (lo + kHuge > at) (void)munmap(reinterpret_cast<void*>(at + size), lo + kHuge - at);
        advise_huge(reinterpret_cast<void*>(at), size);
        return Scratch(reinterpret_cast<double*>(at), ScratchFree{size});
    }
#endif
    void* p = std::malloc(bytes);
    if (p == nullptr) throw std::bad_alloc();
    return Scratch(static_cast<double*>(p));
}

RowMatrixXd fisher_result(std::int64_t n, bool zero) {
    RowMatrixXd k(n, n);
    advise_huge(k.data(), static_cast<std::size_t>(n * n) * sizeof(double));
    if (zero) k.setZero();
    return k;
}

namespace {
// Rows [i0, i1) of the finish (a multiple of 8 apart): every pair (i, j ≤ i) with i in them.
void finish_rows(double* p, std::int64_t n, std::int64_t i0, std::int64_t i1, double scale,
                 bool transpose_add, const FinishTerms& terms) {
    constexpr std::int64_t b = 8;
    for (std::int64_t r0 = i0; r0 < i1; r0 += b) {
        const std::int64_t r1 = std::min(i1, r0 + b);
        for (std::int64_t j0 = 0; j0 <= r0; j0 += b)
            for (std::int64_t i = r0; i < r1; ++i) {
                const std::int64_t j1 = std::min(i + 1, j0 + b);  // the diagonal included
                for (std::int64_t j = j0; j < j1; ++j) {
                    double v = p[i * n + j];
                    for (const double* q : terms.addends) v += q[i * n + j];
                    if (transpose_add) v += p[j * n + i];  // upper: i == j doubles the diagonal
                    if (terms.times) v = (v + terms.beta) * terms.times[i * n + j];
                    p[i * n + j] = scale * v;
                    p[j * n + i] = scale * v;
                }
            }
    }
}
}  // namespace

// In place: K = scale·(F + Fᵀ) (transpose_add), or K = scale·F mirrored from its lower triangle,
// with `terms` applied to F first (FinishTerms). 8×8 tiles: the transposed walk
// touches 8 rows, which an 8-way L1 keeps even when the row stride is a power of two. Split over
// `workers` threads by rows with equal shares of the triangle: at N = 1024 the finish of T = 1
// took 1.5 ms on one thread, as long as the two Grams before it.
void fisher_finish(RowMatrixXd& f, double scale, bool transpose_add, const FinishTerms& terms,
                   int workers) {
    const std::int64_t n = f.rows();
    double* p = f.data();
    workers = static_cast<int>(
        std::clamp<std::int64_t>(workers, 1, std::max<std::int64_t>(n / 64, 1)));
    parallel_rows(workers, workers, [&](std::int64_t w0, std::int64_t w1) {
        const auto row = [&](std::int64_t w) {  // row w·(n/√W)... of an equal triangle share
            const double x = static_cast<double>(n) * std::sqrt(static_cast<double>(w) / workers);
            return std::min<std::int64_t>(n, (static_cast<std::int64_t>(x) + 7) / 8 * 8);
        };
        for (std::int64_t w = w0; w < w1; ++w)
            finish_rows(p, n, row(w), w + 1 == workers ? n : row(w + 1), scale, transpose_add,
                        terms);
    });
}

}  // namespace detail

using detail::fisher_finish;
using detail::fisher_result;
using detail::fisher_scratch;
using detail::SeqInput;

namespace {

// Relative costs of the routes' parts on the reference machine, in units of one multiply-add at
// the full dgemm rate (bench/README.md "Sequence Fisher-Gram grid" has the measurements).
constexpr double kSyrkCost = 1.15;      // triangular Gram (dgemmt) per useful multiply-add
constexpr double kHadamardCost = 6.0;   // one element of a pair's Hadamard-accumulate
constexpr double kConvertCost = 12.0;   // one float32 -> float64 element converted
double formation_cost(double t) {       // batched A_iᵀ D_i with k = T: small k runs slower
    return 1.0 + 12.0 / t;
}

}  // namespace

FisherGramCost fisher_gram_cost(std::int64_t n, std::int64_t t, std::int64_t d_in,
                                std::int64_t d_out) {
    const double N = static_cast<double>(n), T = static_cast<double>(t);
    const double di = static_cast<double>(d_in), dout = static_cast<double>(d_out);
    // Block sums: two symmetric (NT)×(NT) Grams (half of each); the bias block is folded in.
    const double block = 0.5 * (N * T) * (N * T) * (di + dout);
    // Materialise: Γ_i = A_iᵀ D_i for every i, then the lower half of ΓΓᵀ.
    const double mat = N * T * di * dout + 0.5 * N * N * di * dout;
    return {block, mat};
}

FisherRoute resolve_fisher_route(std::int64_t n, std::int64_t t, std::int64_t d_in,
                                 std::int64_t d_out, FisherRoute route) {
    if (route != FisherRoute::Auto) return route;
    if (t == 1) return FisherRoute::BlockSum;
    const double N = static_cast<double>(n), T = static_cast<double>(t);
    const double di = static_cast<double>(d_in), dout = static_cast<double>(d_out);
    const auto c = fisher_gram_cost(n, t, d_in, d_out);
    // Estimated time in multiply-adds at the dgemm rate: block sums run at that rate plus one
    // Hadamard-accumulate per element of the (NT)² pair grid (half of it); materialising pays
    // the small-k formation and the triangular Gram's lower rate.
    const double block = c.block_sum + 0.5 * (N * T) * (N * T) * kHadamardCost;
    const double mat = N * T * di * dout * formation_cost(T) + 0.5 * N * N * di * dout * kSyrkCost +
                       N * T * (di + dout) * kConvertCost;
    return mat < block ? FisherRoute::Materialize : FisherRoute::BlockSum;
}

namespace {

// The N×d float64 panel of one position t: in place (direct input), from a held converted copy
// of the whole tensor (when it fits the scratch budget), or converted into a slot on demand.
class PositionPanels {
public:
    PositionPanels(const SeqInput& x, std::int64_t budget) : m_x(x) {
        const std::int64_t n = x.n(), t = x.t(), d = x.d();
        if (x.direct()) {
            x.check_finite();
        } else if (n * t * d * 8 <= budget) {
            m_held = fisher_scratch(n * t * d);
            x.copy(0, n, 0, t, 0, d, m_held.get());
        } else {
            for (auto& s : m_slot) s = fisher_scratch(n * d);
        }
    }
    /// Whether get() only reads (direct or held): one object can then serve every worker.
    bool shared() const { return m_x.direct() || m_held != nullptr; }
    /// Pointer and leading dimension of position t's N×d panel (slot 0 or 1 when converted).
    std::pair<const double*, std::int64_t> get(std::int64_t t, int slot) {
        const std::int64_t n = m_x.n(), d = m_x.d();
        if (m_x.direct()) return {m_x.data() + t * m_x.s1(), m_x.s0()};
        if (m_held) return {m_held.get() + t * d, m_x.t() * d};
        if (m_loaded[0] == t) slot = 0;  // the pair (t, t): both panels are the same
        auto& s = m_slot[slot];
        if (m_loaded[slot] != t) m_x.copy(0, n, t, t + 1, 0, d, s.get());
        m_loaded[slot] = t;
        return {s.get(), d};
    }

private:
    const SeqInput& m_x;
    detail::Scratch m_held;
    detail::Scratch m_slot[2];
    std::int64_t m_loaded[2] = {-1, -1};
};

// F(i, j) (+)= w·(GA(i, j) + β)·GD(i, j) over rows [i0, i1) (GA, GD row-major with ld = ldg,
// row 0 = i0) and columns j < n for an off-diagonal pair, j ≤ i for t = s, where the diagonal
// weight is ½ (K = F + Fᵀ then counts the pair once) or 1 (T = 1: F is K's lower triangle, and
// `assign` writes it without a zero-filled start).
struct PairWeights {
    double beta;
    bool diagonal;
    double diag_weight;
    bool assign;
};
void hadamard_accumulate(const double* ga, const double* gd, std::int64_t ldg, std::int64_t i0,
                         std::int64_t i1, PairWeights w, RowMatrixXd& f) {
    const std::int64_t n = f.cols();
    for (std::int64_t i = i0; i < i1; ++i) {
        const double* a = ga + (i - i0) * ldg;
        const double* g = gd + (i - i0) * ldg;
        double* fr = f.data() + i * n;
        const std::int64_t end = w.diagonal ? i : n;
        if (w.assign) {
            for (std::int64_t j = 0; j < end; ++j) fr[j] = (a[j] + w.beta) * g[j];
            fr[i] = w.diag_weight * (a[i] + w.beta) * g[i];
        } else {
            for (std::int64_t j = 0; j < end; ++j) fr[j] += (a[j] + w.beta) * g[j];
            if (w.diagonal) fr[i] += w.diag_weight * (a[i] + w.beta) * g[i];
        }
    }
}

// Row blocks of the pair Grams and their owners: block b (rows [b·rb, (b + 1)·rb)) belongs to
// worker b mod W on even rounds of W blocks and to W − 1 − (b mod W) on odd ones, so that the
// triangles of the diagonal pairs (row i costs i) balance as well as the full rows do. A worker
// owns the same rows of F for every pair: no two workers ever write the same row.
struct RowBlocks {
    std::int64_t rb;
    int worker, workers;
    bool owns(std::int64_t b) const {
        const std::int64_t round = b / workers, pos = b % workers;
        return (round % 2 == 0 ? pos : workers - 1 - pos) == worker;
    }
};

// One position pair (t, s) over the worker's row blocks: Gram blocks GA = A_t[I] A_sᵀ,
// GD = D_t[I] D_sᵀ (gemm for the rectangle left of the diagonal block, dgemmt inside it when
// t = s).
using Panel = std::pair<const double*, std::int64_t>;
void pair_blocks(Panel at, Panel as, Panel dt, Panel ds, std::int64_t di, std::int64_t dout,
                 const RowBlocks& rows, PairWeights w, double* ga, double* gd, std::int64_t ldg,
                 RowMatrixXd& f) {
    const std::int64_t n = f.rows(), rb = rows.rb;
    for (std::int64_t b = 0; b * rb < n; ++b) {
        if (!rows.owns(b)) continue;
        const std::int64_t i0 = b * rb, i1 = std::min(n, i0 + rb), m = i1 - i0;
        const std::int64_t cols = w.diagonal ? i0 : n;
        const double* ai = at.first + i0 * at.second;
        const double* di_ = dt.first + i0 * dt.second;
        detail::gemm_nt_ld(m, cols, di, 1.0, ai, at.second, as.first, as.second, 0.0, ga, ldg);
        detail::gemm_nt_ld(m, cols, dout, 1.0, di_, dt.second, ds.first, ds.second, 0.0, gd, ldg);
        if (w.diagonal) {
            detail::syrk_lower_ld(m, di, 1.0, ai, at.second, 0.0, ga + i0, ldg);
            detail::syrk_lower_ld(m, dout, 1.0, di_, dt.second, 0.0, gd + i0, ldg);
        }
        hadamard_accumulate(ga, gd, ldg, i0, i1, w, f);
    }
}

// Every pair (t, s ≤ t) over one worker's row blocks of F. Panels that convert on demand (slot
// mode: the inputs exceed the budget) are the worker's own.
void block_sum_rows(PositionPanels& pa0, PositionPanels& pd0, const SeqInput& a,
                    const SeqInput& d, double beta, const RowBlocks& rows, RowMatrixXd& f) {
    const std::int64_t n = a.n(), t = a.t();
    std::unique_ptr<PositionPanels> own_a, own_d;
    if (!pa0.shared()) own_a = std::make_unique<PositionPanels>(a, 0);
    if (!pd0.shared()) own_d = std::make_unique<PositionPanels>(d, 0);
    PositionPanels& pa = own_a ? *own_a : pa0;
    PositionPanels& pd = own_d ? *own_d : pd0;
    const std::int64_t ldg = n + 8;  // rows padded off a power-of-two stride
    const auto ga = fisher_scratch(rows.rb * ldg), gd = fisher_scratch(rows.rb * ldg);
    for (std::int64_t tt = 0; tt < t; ++tt) {
        const auto at = pa.get(tt, 0), dt = pd.get(tt, 0);
        for (std::int64_t ss = 0; ss <= tt; ++ss) {
            const auto as = pa.get(ss, 1), ds = pd.get(ss, 1);
            const PairWeights w{beta, ss == tt, t == 1 ? 1.0 : 0.5, t == 1};
            pair_blocks(at, as, dt, ds, a.d(), d.d(), rows, w, ga.get(), gd.get(), ldg, f);
        }
    }
}

// T = 1: K = ((AAᵀ + β) ∘ (DDᵀ))/N from the lower triangles of the two Grams, formed side by side
// by two workers (one single-threaded dsyrk each), then one Hadamard-and-mirror pass split by
// rows. At N = 1024 the row blocks of the general path ran their gemms at about half the dsyrk
// rate.
RowMatrixXd single_pair(PositionPanels& pa, PositionPanels& pd, std::int64_t n, std::int64_t di,
                        std::int64_t dout, double beta, int workers) {
    const Panel am = pa.get(0, 0), dm = pd.get(0, 0);
    RowMatrixXd k = fisher_result(n, false);
    const auto g = fisher_scratch(n * n);
    detail::parallel_rows(2, std::min(workers, 2), [&](std::int64_t w0, std::int64_t w1) {
        for (std::int64_t w = w0; w < w1; ++w) {
            if (w == 0) detail::syrk_lower_ld(n, di, 1.0, am.first, am.second, 0.0, k.data(), n);
            else detail::syrk_lower_ld(n, dout, 1.0, dm.first, dm.second, 0.0, g.get(), n);
        }
    });
    detail::FinishTerms terms;
    terms.times = g.get();
    terms.beta = beta;
    fisher_finish(k, 1.0 / static_cast<double>(n), false, terms, workers);
    return k;
}

// Workers split F by row blocks (RowBlocks), each BLAS call single-threaded in its worker
// (BlasWorkers): at N = 256 the 2-thread calls on one 256-row block paid a wake-up and a join
// each (bench/README.md, "Sequence Fisher-Gram grid").
RowMatrixXd block_sum(const SeqInput& a, const SeqInput& d, bool bias, std::int64_t budget) {
    const std::int64_t n = a.n(), t = a.t();
    PositionPanels pa(a, budget / 2), pd(d, budget / 2);
    detail::BlasWorkers region(static_cast<int>(std::min<std::int64_t>((n + 15) / 16, 64)));
    const int workers = region.workers();
    const double beta = bias ? 1.0 : 0.0;
    if (t == 1 && n * n * 8 <= budget) return single_pair(pa, pd, n, a.d(), d.d(), beta, workers);
    // T = 1: one symmetric pair, written straight into K's lower triangle; else K = F + Fᵀ.
    RowMatrixXd f = fisher_result(n, t > 1);
    // Row blocks: two rb×N float64 blocks stay in a core's L2, and each worker gets two or more.
    const std::int64_t rb0 =
        std::min(n, std::clamp<std::int64_t>((std::int64_t(1) << 17) / n, 64, 256));
    const std::int64_t per_worker = (n + 2 * workers - 1) / (2 * workers);
    const std::int64_t rb =
        workers == 1 ? rb0 : std::min(rb0, std::max<std::int64_t>(16, per_worker));
    detail::parallel_rows(workers, workers, [&](std::int64_t w0, std::int64_t w1) {
        for (std::int64_t w = w0; w < w1; ++w)
            block_sum_rows(pa, pd, a, d, beta, RowBlocks{rb, static_cast<int>(w), workers}, f);
    });
    fisher_finish(f, 1.0 / static_cast<double>(n), t > 1, {}, workers);
    return f;
}

// The scratch budget: the caller's chunk_bytes, by default 1/8 of a float64 Γ (between 32 and
// 256 MiB), so that the core stays well under the N×p float32 per-sample gradients (and their
// copy) that torch.func holds.
std::int64_t scratch_budget(std::int64_t n, std::int64_t di, std::int64_t dout,
                            const FisherGramOptions& opts) {
    if (opts.chunk_bytes != FisherGramOptions{}.chunk_bytes) return opts.chunk_bytes;
    const double gamma = 8.0 * static_cast<double>(n) * static_cast<double>(di) *
                         static_cast<double>(dout);
    return static_cast<std::int64_t>(
        std::clamp(gamma / 8.0, 32.0 * kMiB, static_cast<double>(opts.chunk_bytes)));
}

}  // namespace

RowMatrixXd fisher_gram(const TensorView& acts, const TensorView& grads,
                        const FisherGramOptions& opts) {
    constexpr const char* fn = "deadspec.fisher_gram";
    detail::check_cpu_float(acts, fn, "acts");
    detail::check_cpu_float(grads, fn, "grads");
    DEADSPEC_CHECK_ARG(acts.ndim() == 2 || acts.ndim() == 3, fn,
                       ": acts must be 2-D (N, d_in) or 3-D (N, T, d_in), got shape ",
                       acts.shape_string());
    DEADSPEC_CHECK_ARG(grads.ndim() == acts.ndim(), fn, ": grads must be ", acts.ndim(),
                       "-D like acts, got shape ", grads.shape_string());
    DEADSPEC_CHECK_ARG(grads.shape[0] == acts.shape[0], fn,
                       ": grads must have the same number of samples N as acts (",
                       acts.shape[0], "), got shape ", grads.shape_string());
    if (acts.ndim() == 3)
        DEADSPEC_CHECK_ARG(grads.shape[1] == acts.shape[1], fn,
                           ": grads must have the same sequence length T as acts (",
                           acts.shape[1], "), got shape ", grads.shape_string());
    DEADSPEC_CHECK_ARG(opts.chunk_bytes > 0, fn, ": chunk_bytes must be positive, got ",
                       opts.chunk_bytes);
    DEADSPEC_CHECK_ARG(acts.numel() > 0, fn, ": acts must not be empty, got shape ",
                       acts.shape_string());
    DEADSPEC_CHECK_ARG(grads.numel() > 0, fn, ": grads must not be empty, got shape ",
                       grads.shape_string());
    DEADSPEC_CHECK_ARG(acts.data != nullptr, fn, ": acts has a null data pointer");
    DEADSPEC_CHECK_ARG(grads.data != nullptr, fn, ": grads has a null data pointer");

    const std::int64_t n = acts.shape[0];
    const std::int64_t t = acts.ndim() == 3 ? acts.shape[1] : 1;
    const detail::SeqInput a(acts, t, fn, "acts"), d(grads, t, fn, "grads");
    const std::int64_t budget = scratch_budget(n, a.d(), d.d(), opts);
    const FisherRoute route = resolve_fisher_route(n, t, a.d(), d.d(), opts.route);
    RowMatrixXd k = route == FisherRoute::Materialize
                        ? detail::materialize_workers(a, d, opts.bias, budget)
                        : block_sum(a, d, opts.bias, budget);
    detail::check_finite_result(k, fn);
    return k;
}

RowMatrixXd fisher_gram_from_grads(const TensorView& per_sample_grads) {
    constexpr const char* fn = "deadspec.fisher_gram_from_grads";
    detail::check_cpu_float(per_sample_grads, fn, "grads");
    DEADSPEC_CHECK_ARG(per_sample_grads.ndim() >= 2, fn,
                       ": grads must be at least 2-D (N, p...), got shape ",
                       per_sample_grads.shape_string());
    const auto h = detail::host_matrix(per_sample_grads, 1, fn, "grads");
    RowMatrixXd k = detail::gram_rows(h.data(), h.rows(), h.cols(), 1.0 / static_cast<double>(h.rows()));
    detail::check_finite_result(k, fn);
    return k;
}

}  // namespace deadspec
