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
#include <memory>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include "detail/blas3.hpp"
#include "detail/core.hpp"

namespace deadspec {

namespace {

constexpr std::int64_t kMiB = std::int64_t(1) << 20;

// Ask for transparent huge pages on a large buffer before its first touch. Fresh 4 KiB pages cost
// about 1 µs each to fault in on the reference VM (16 MiB of scratch: ~4 ms, a quarter of a
// 256×64×128 Fisher-Gram); with MADV_HUGEPAGE one fault maps 2 MiB.
void advise_huge(void* p, std::size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes < (std::size_t(4) << 20)) return;
    const auto page = static_cast<std::uintptr_t>(sysconf(_SC_PAGESIZE));
    const auto lo = (reinterpret_cast<std::uintptr_t>(p) + page - 1) / page * page;
    const auto hi = (reinterpret_cast<std::uintptr_t>(p) + bytes) / page * page;
    if (hi > lo) (void)madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
#else
    (void)p;
    (void)bytes;
#endif
}

// Uninitialised float64 scratch (written before it is read), huge-page backed when large.
std::unique_ptr<double[]> scratch(std::int64_t len) {
    std::unique_ptr<double[]> p(new double[static_cast<std::size_t>(std::max<std::int64_t>(len, 1))]);
    advise_huge(p.get(), static_cast<std::size_t>(len) * sizeof(double));
    return p;
}

// An n×n result, huge-page backed when large; zero-filled on request.
RowMatrixXd result_matrix(std::int64_t n, bool zero) {
    RowMatrixXd k(n, n);
    advise_huge(k.data(), static_cast<std::size_t>(n * n) * sizeof(double));
    if (zero) k.setZero();
    return k;
}

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

// A (N, T, d) float32/float64 CPU tensor (2-D: T = 1) read as float64. `direct()` inputs (float64
// with unit stride along d) are used in place: element (i, t, c) at data()[i·s0 + t·s1 + c].
class SeqInput {
public:
    SeqInput(const TensorView& v, std::int64_t t, const char* fn, const char* arg)
        : m_v(v), m_fn(fn), m_arg(arg), m_n(v.shape[0]), m_t(t), m_d(v.shape.back()),
          m_s0(v.stride(0)), m_s1(v.ndim() == 3 && t > 1 ? v.stride(1) : m_d),
          m_s2(v.stride(v.ndim() - 1)) {}

    std::int64_t n() const { return m_n; }
    std::int64_t t() const { return m_t; }
    std::int64_t d() const { return m_d; }
    std::int64_t s0() const { return m_s0; }
    std::int64_t s1() const { return m_s1; }
    // In place only where the strides are valid BLAS leading dimensions (rows of d apart at least).
    bool direct() const {
        return m_v.dtype == DType::Float64 && m_s2 == 1 && m_s0 >= m_d && m_s1 >= m_d;
    }
    const double* data() const { return static_cast<const double*>(m_v.data); }

    /// Samples [i0, i1), positions [t0, t1), columns [c0, c1) as float64 rows ((i − i0)·(t1 − t0)
    /// + t − t0) of width c1 − c0, contiguous. Throws (naming the first non-finite element of
    /// the whole tensor) if a converted value is NaN/Inf.
    void copy(std::int64_t i0, std::int64_t i1, std::int64_t t0, std::int64_t t1,
              std::int64_t c0, std::int64_t c1, double* out) const {
        const std::int64_t w = c1 - c0, nt = t1 - t0;
        const std::int64_t work = (i1 - i0) * nt * w;
        const int threads = detail::worker_threads(work, std::int64_t(1) << 20, i1 - i0);
        detail::parallel_rows(i1 - i0, threads, [&](std::int64_t r0, std::int64_t r1) {
            double* o = out + r0 * nt * w;
            if (m_v.dtype == DType::Float64)
                copy_rows(static_cast<const double*>(m_v.data), i0 + r0, i0 + r1, t0, t1, c0, c1, o);
            else
                copy_rows(static_cast<const float*>(m_v.data), i0 + r0, i0 + r1, t0, t1, c0, c1, o);
            if (!all_finite(o, (r1 - r0) * nt * w)) fail_non_finite();
        });
    }

    /// Throws unless every element is finite (for direct inputs, which are never copied).
    void check_finite() const {
        bool ok = true;
        for (std::int64_t i = 0; i < m_n && ok; ++i)
            for (std::int64_t tt = 0; tt < m_t && ok; ++tt)
                ok = all_finite(data() + i * m_s0 + tt * m_s1, m_d);
        if (!ok) fail_non_finite();
    }

private:
    template <typename S>
    void copy_rows(const S* base, std::int64_t i0, std::int64_t i1, std::int64_t t0,
                   std::int64_t t1, std::int64_t c0, std::int64_t c1, double* out) const {
        const std::int64_t w = c1 - c0;
        for (std::int64_t i = i0; i < i1; ++i)
            for (std::int64_t tt = t0; tt < t1; ++tt, out += w) {
                const S* src = base + i * m_s0 + tt * m_s1 + c0 * m_s2;
                if (m_s2 == 1) {
                    for (std::int64_t c = 0; c < w; ++c) out[c] = static_cast<double>(src[c]);
                } else {
                    for (std::int64_t c = 0; c < w; ++c)
                        out[c] = static_cast<double>(src[c * m_s2]);
                }
            }
    }

    static bool all_finite(const double* p, std::int64_t len) {
        int ok = 1;  // x − x is 0 for finite x and NaN for ±Inf/NaN; an int AND reduction vectorises
        for (std::int64_t i = 0; i < len; ++i) ok &= static_cast<int>(p[i] - p[i] == 0.0);
        return ok != 0;
    }

    // The full conversion names the first non-finite element in flat order (the message every
    // entry point gives); only reached on the error path.
    [[noreturn]] void fail_non_finite() const {
        (void)detail::host_matrix(m_v, 1, m_fn, m_arg);
        throw std::invalid_argument(detail::concat(m_fn, ": ", m_arg, " must be finite"));
    }

    const TensorView& m_v;
    const char* m_fn;
    const char* m_arg;
    std::int64_t m_n, m_t, m_d, m_s0, m_s1, m_s2;
};

// The N×d float64 panel of one position t: in place (direct input), from a held converted copy
// of the whole tensor (when it fits the scratch budget), or converted into a slot on demand.
class PositionPanels {
public:
    PositionPanels(const SeqInput& x, std::int64_t budget) : m_x(x) {
        const std::int64_t n = x.n(), t = x.t(), d = x.d();
        if (x.direct()) {
            x.check_finite();
        } else if (n * t * d * 8 <= budget) {
            m_held = scratch(n * t * d);
            x.copy(0, n, 0, t, 0, d, m_held.get());
        } else {
            for (auto& s : m_slot) s = scratch(n * d);
        }
    }
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
    std::unique_ptr<double[]> m_held;
    std::unique_ptr<double[]> m_slot[2];
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

// In place: K = scale·(F + Fᵀ) (transpose_add), or K = scale·F mirrored from its lower triangle.
// 8×8 tiles: the transposed walk touches 8 rows, which an 8-way L1 keeps even when the row
// stride is a power of two.
void finish(RowMatrixXd& f, double scale, bool transpose_add) {
    const std::int64_t n = f.rows();
    double* p = f.data();
    constexpr std::int64_t b = 8;
    for (std::int64_t i0 = 0; i0 < n; i0 += b) {
        const std::int64_t i1 = std::min(n, i0 + b);
        for (std::int64_t j0 = 0; j0 <= i0; j0 += b)
            for (std::int64_t i = i0; i < i1; ++i) {
                const std::int64_t j1 = std::min(i, j0 + b);  // strictly below the diagonal
                for (std::int64_t j = j0; j < j1; ++j) {
                    const double v =
                        scale * (transpose_add ? p[i * n + j] + p[j * n + i] : p[i * n + j]);
                    p[i * n + j] = v;
                    p[j * n + i] = v;
                }
            }
        for (std::int64_t i = i0; i < i1; ++i) p[i * n + i] *= transpose_add ? 2.0 * scale : scale;
    }
}

// One position pair (t, s) over row blocks: Gram blocks GA = A_t[I] A_sᵀ, GD = D_t[I] D_sᵀ
// (gemm for the rectangle left of the diagonal block, dgemmt inside it when t = s).
using Panel = std::pair<const double*, std::int64_t>;
void pair_blocks(Panel at, Panel as, Panel dt, Panel ds, std::int64_t di, std::int64_t dout,
                 std::int64_t rb, PairWeights w, double* ga, double* gd, std::int64_t ldg,
                 RowMatrixXd& f) {
    const std::int64_t n = f.rows();
    for (std::int64_t i0 = 0; i0 < n; i0 += rb) {
        const std::int64_t i1 = std::min(n, i0 + rb), m = i1 - i0;
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

RowMatrixXd block_sum(const SeqInput& a, const SeqInput& d, bool bias, std::int64_t budget) {
    const std::int64_t n = a.n(), t = a.t(), di = a.d(), dout = d.d();
    PositionPanels pa(a, budget / 2), pd(d, budget / 2);
    // T = 1: one symmetric pair, written straight into K's lower triangle; else K = F + Fᵀ.
    RowMatrixXd f = result_matrix(n, t > 1);
    // Row blocks of the pair Grams: two rb×N float64 blocks stay in a core's L2; their rows are
    // padded off a power-of-two stride.
    const std::int64_t rb =
        std::min(n, std::clamp<std::int64_t>((std::int64_t(1) << 17) / n, 64, 256));
    const std::int64_t ldg = n + 8;
    const auto ga = scratch(rb * ldg), gd = scratch(rb * ldg);
    const double beta = bias ? 1.0 : 0.0;
    for (std::int64_t tt = 0; tt < t; ++tt) {
        const auto at = pa.get(tt, 0), dt = pd.get(tt, 0);
        for (std::int64_t ss = 0; ss <= tt; ++ss) {
            const auto as = pa.get(ss, 1), ds = pd.get(ss, 1);
            const PairWeights w{beta, ss == tt, t == 1 ? 1.0 : 0.5, t == 1};
            pair_blocks(at, as, dt, ds, di, dout, rb, w, ga.get(), gd.get(), ldg, f);
        }
    }
    finish(f, 1.0 / static_cast<double>(n), t > 1);
    return f;
}

// Tile sizes of the materialise route: q columns of d_out per slab of D (held for all samples
// unless D is used in place), r columns of d_in per tile of Γ (N × r·q).
struct Tiles {
    std::int64_t q, r;
};
Tiles materialize_tiles(const SeqInput& a, const SeqInput& d, std::int64_t budget) {
    const std::int64_t n = a.n(), t = a.t(), di = a.d(), dout = d.d();
    // Γ tiles of 8-32 MiB (a quarter of the budget) stay in L3 between their formation and their
    // Gram; the D slab takes the rest. The batched products run fastest with q near 128 and r a
    // multiple of 16 (r × q = 64 × 128: 40 G multiply-adds/s against 27 at 21 × 192, T = 64).
    const std::int64_t tile =
        std::max<std::int64_t>(std::min(budget / 2, std::clamp(budget / 4, 8 * kMiB, 32 * kMiB)), 1);
    const std::int64_t slab = std::max<std::int64_t>(budget - tile, 1);
    std::int64_t q = std::min<std::int64_t>(dout, 128);
    if (!d.direct()) q = std::clamp<std::int64_t>(slab / (n * t * 8), 1, q);
    if (q > 32) q -= q % 32;
    std::int64_t r = std::clamp<std::int64_t>(tile / (n * q * 8), 1, di);
    if (r > 16 && r < di) r -= r % 16;
    return {q, r};
}

RowMatrixXd materialize(const SeqInput& a, const SeqInput& d, bool bias, std::int64_t budget) {
    const std::int64_t n = a.n(), t = a.t(), di = a.d(), dout = d.d();
    if (a.direct()) a.check_finite();
    if (d.direct()) d.check_finite();
    const Tiles tl = materialize_tiles(a, d, budget);
    // A is converted per sample block (about 1 MiB) right before its batched product.
    const std::int64_t nb =
        a.direct() ? n : std::clamp<std::int64_t>(kMiB / (t * tl.r * 8), 1, n);
    const auto dslab = scratch(d.direct() ? 1 : n * t * tl.q);
    const auto ablk = scratch(a.direct() ? 1 : nb * t * tl.r);
    const auto gamma = scratch(n * tl.r * tl.q);
    std::vector<double> sums(bias ? static_cast<std::size_t>(n * dout) : 0);
    RowMatrixXd k = result_matrix(n, false);  // lower half: the first Gram writes (beta = 0)
    double beta = 0.0;
    for (std::int64_t q0 = 0; q0 < dout; q0 += tl.q) {
        const std::int64_t q = std::min(tl.q, dout - q0);
        const double* dp = d.direct() ? d.data() + q0 : dslab.get();
        const std::int64_t ldd = d.direct() ? d.s1() : q, sd = d.direct() ? d.s0() : t * q;
        if (!d.direct()) d.copy(0, n, 0, t, q0, q0 + q, dslab.get());
        for (std::int64_t i = 0; bias && i < n; ++i)
            for (std::int64_t tt = 0; tt < t; ++tt)
                for (std::int64_t c = 0; c < q; ++c)
                    sums[static_cast<std::size_t>(i * dout + q0 + c)] += dp[i * sd + tt * ldd + c];
        for (std::int64_t r0 = 0; r0 < di; r0 += tl.r) {
            const std::int64_t r = std::min(tl.r, di - r0);
            for (std::int64_t i0 = 0; i0 < n; i0 += nb) {
                const std::int64_t i1 = std::min(n, i0 + nb);
                const double* ap = a.direct() ? a.data() + i0 * a.s0() + r0 : ablk.get();
                const std::int64_t lda = a.direct() ? a.s1() : r, sa = a.direct() ? a.s0() : t * r;
                if (!a.direct()) a.copy(i0, i1, 0, t, r0, r0 + r, ablk.get());
                detail::gemm_tn_batched(i1 - i0, r, q, t, ap, lda, sa, dp + i0 * sd, ldd, sd,
                                        gamma.get() + i0 * r * q, q, r * q);
            }
            detail::syrk_lower_ld(n, r * q, 1.0, gamma.get(), r * q, beta, k.data(), n);
            beta = 1.0;
        }
    }
    if (bias) detail::syrk_lower_ld(n, dout, 1.0, sums.data(), dout, 1.0, k.data(), n);
    finish(k, 1.0 / static_cast<double>(n), false);
    return k;
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
    const SeqInput a(acts, t, fn, "acts"), d(grads, t, fn, "grads");
    const std::int64_t budget = scratch_budget(n, a.d(), d.d(), opts);
    const FisherRoute route = resolve_fisher_route(n, t, a.d(), d.d(), opts.route);
    RowMatrixXd k = route == FisherRoute::Materialize ? materialize(a, d, opts.bias, budget)
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
