// SPDX-License-Identifier: Apache-2.0
// The materialise route of the sequence Fisher-Gram by worker threads (detail/fisher_seq.hpp).
//
// Γ is formed in tiles of N rows × (r columns of d_in × q columns of d_out). For each tile, every
// worker forms the rows of its own samples (converting A_I and D_I block by block into float64
// blocks that stay in its core's L2, then one batched dgemm Γ_i = A_iᵀD_i per block); after a
// barrier, every worker folds its own share of the tile's columns into its own partial K by
// dgemmt. Each input element is converted once per tile that needs it, and every BLAS call runs
// single-threaded in its worker (BlasWorkers): on small problems (N = 256, d = 128, T = 16-64:
// 8-20 ms) the 2-thread BLAS calls paid a wake-up and a join for each of dozens of calls while
// the conversions ran on one core (bench/README.md, "Sequence Fisher-Gram grid").
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "detail/blas3.hpp"
#include "detail/core.hpp"
#include "detail/fisher_seq.hpp"

namespace deadspec::detail {

namespace {

// Tile of the workers: q columns of d_out × r columns of d_in for all N samples; nb samples per
// converted block of a worker.
struct Tiles {
    std::int64_t q, r, nb;
};

// Whole rows of d_in when a tile of that width holds at least 16 columns of d_out (or all of
// them): A_I is then converted as contiguous rows, D_I once. Otherwise r × q tiles with q near
// 64. A worker's two converted blocks take about a third of a core's L2 (1 MiB on the reference
// machine), so its batched products read them from L2.
Tiles worker_tiles(std::int64_t n, std::int64_t t, std::int64_t di, std::int64_t dout,
                   std::int64_t tile_bytes) {
    constexpr std::int64_t kBlockBytes = std::int64_t(384) << 10;
    std::int64_t q = std::max<std::int64_t>(tile_bytes / (n * di * 8), 1), r = di;
    if (q < std::min<std::int64_t>(dout, 16)) {
        q = std::min<std::int64_t>(dout, 64);
        r = std::clamp<std::int64_t>(tile_bytes / (n * q * 8), 1, di);
        if (r > 16) r -= r % 16;
    }
    q = std::min(q, dout);
    const std::int64_t chunks = (dout + q - 1) / q;  // balanced chunks of d_out
    q = (dout + chunks - 1) / chunks;
    const std::int64_t nb = std::clamp<std::int64_t>(kBlockBytes / (t * (r + q) * 8), 1, n);
    return {q, r, nb};
}

// All workers meet between forming a tile and reading it, and before it is overwritten. A
// waiting worker yields for a short while, then sleeps: right after a torch step, torch's OpenMP
// threads spin for about 10 ms and take a core, and a worker that kept its core spinning here
// while its peer was descheduled held the region back (a sleeping one lets the scheduler move
// the peer onto its core). A worker that throws releases the others (abort), which then return.
class Barrier {
public:
    explicit Barrier(int n) : m_n(n) {}
    /// False once aborted.
    bool wait() {
        std::unique_lock<std::mutex> lk(m_mutex);
        const std::uint64_t gen = m_gen;
        if (++m_count == m_n) {
            m_count = 0;
            ++m_gen;
            lk.unlock();
            m_cv.notify_all();
            return !m_abort;
        }
        lk.unlock();
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(50);
        while (std::chrono::steady_clock::now() < until) {
            if (done(gen)) return !m_abort.load();
            std::this_thread::yield();
        }
        lk.lock();
        m_cv.wait(lk, [&] { return m_gen != gen || m_abort; });
        return !m_abort;
    }
    void abort() {
        {
            std::lock_guard<std::mutex> lk(m_mutex);
            m_abort = true;
        }
        m_cv.notify_all();
    }

private:
    bool done(std::uint64_t gen) {
        std::lock_guard<std::mutex> lk(m_mutex);
        return m_gen != gen || m_abort;
    }
    const int m_n;
    int m_count = 0;
    std::uint64_t m_gen = 0;
    std::atomic<bool> m_abort{false};
    std::mutex m_mutex;
    std::condition_variable m_cv;
};

// What the workers share: the inputs, the tile plan, the tile, the column sums of D (bias), one
// partial K per worker (worker 0's is the result), and one task counter per phase of each tile.
struct Shared {
    const SeqInput& a;
    const SeqInput& d;
    Tiles tl;
    std::int64_t slice;  // columns of the tile per Gram task
    double* tile;
    double* sums;  // n × d_out, or null without bias
    std::vector<double*> k;
    std::vector<char> written;  // whether worker w's K has been written (beta = 0 first)
    std::unique_ptr<std::atomic<std::int64_t>[]> next;
    Barrier barrier;
};

// Rows [s0, s1) of the tile (columns [r0, r0 + r) of d_in × [q0, q0 + q) of d_out).
void form_rows(Shared& sh, std::int64_t s0, std::int64_t s1, std::int64_t r0, std::int64_t r,
               std::int64_t q0, std::int64_t q, double* ablk, double* dblk) {
    const SeqInput &a = sh.a, &d = sh.d;
    const std::int64_t t = a.t(), dout = d.d();
    for (std::int64_t i0 = s0; i0 < s1; i0 += sh.tl.nb) {
        const std::int64_t i1 = std::min(s1, i0 + sh.tl.nb);
        const double* ap = a.direct() ? a.data() + i0 * a.s0() + r0 : ablk;
        const std::int64_t lda = a.direct() ? a.s1() : r, sa = a.direct() ? a.s0() : t * r;
        const double* dp = d.direct() ? d.data() + i0 * d.s0() + q0 : dblk;
        const std::int64_t ldd = d.direct() ? d.s1() : q, sd = d.direct() ? d.s0() : t * q;
        if (!a.direct()) a.copy(i0, i1, 0, t, r0, r0 + r, ablk, true);
        if (!d.direct()) d.copy(i0, i1, 0, t, q0, q0 + q, dblk, true);
        for (std::int64_t i = i0; sh.sums && r0 == 0 && i < i1; ++i) {
            double* s = sh.sums + i * dout + q0;
            for (std::int64_t tt = 0; tt < t; ++tt) {
                const double* row = dp + (i - i0) * sd + tt * ldd;
                for (std::int64_t c = 0; c < q; ++c) s[c] += row[c];
            }
        }
        gemm_tn_batched(i1 - i0, r, q, t, ap, lda, sa, dp, ldd, sd, sh.tile + i0 * r * q, q,
                        r * q);
    }
}

// Worker w's part of every tile. Both phases hand out their tasks (blocks of samples to form,
// slices of the tile's columns to fold into the worker's own K) from a shared counter, so a
// worker that gets less of a core (right after a torch step, torch's OpenMP threads spin for
// about 10 ms) takes fewer tasks instead of holding the others at the next barrier.
void run_worker(Shared& sh, int w) {
    const std::int64_t n = sh.a.n(), t = sh.a.t(), di = sh.a.d(), dout = sh.d.d();
    const Tiles& tl = sh.tl;
    const auto blocks = fisher_scratch(tl.nb * t * (tl.r + tl.q));
    const auto ws = static_cast<std::size_t>(w);
    std::int64_t phase = 0;
    for (std::int64_t q0 = 0; q0 < dout; q0 += tl.q) {
        const std::int64_t q = std::min(tl.q, dout - q0);
        for (std::int64_t r0 = 0; r0 < di; r0 += tl.r, phase += 2) {
            const std::int64_t r = std::min(tl.r, di - r0), c = r * q;
            for (std::int64_t b = sh.next[phase]++; b * tl.nb < n; b = sh.next[phase]++)
                form_rows(sh, b * tl.nb, std::min(n, (b + 1) * tl.nb), r0, r, q0, q, blocks.get(),
                          blocks.get() + tl.nb * t * tl.r);
            if (!sh.barrier.wait()) return;
            auto& slices = sh.next[phase + 1];
            for (std::int64_t j = slices++; j * sh.slice < c; j = slices++) {
                const std::int64_t c0 = j * sh.slice, c1 = std::min(c, c0 + sh.slice);
                syrk_lower_ld(n, c1 - c0, 1.0, sh.tile + c0, c, sh.written[ws] ? 1.0 : 0.0,
                              sh.k[ws], n);
                sh.written[ws] = 1;
            }
            if (!sh.barrier.wait()) return;  // the next tile overwrites this one
        }
    }
}

}  // namespace

RowMatrixXd materialize_workers(const SeqInput& a, const SeqInput& d, bool bias,
                                std::int64_t budget) {
    const std::int64_t n = a.n(), t = a.t(), di = a.d(), dout = d.d();
    if (a.direct()) a.check_finite();
    if (d.direct()) d.check_finite();
    std::vector<double> sums(bias ? static_cast<std::size_t>(n * dout) : 0, 0.0);
    RowMatrixXd k = fisher_result(n, false);
    // Tiles up to half of Γ and 64 MiB: N = 256, d = 128, T = 64 took 10.8 ms with 16 MiB tiles
    // (two) against 14.1 ms with one 32 MiB tile (past L3 between formation and Gram); N = 1024,
    // d = 512, T = 32: 1.68 s with 64 MiB tiles against 1.86 s with 256 MiB (bench/README.md).
    const double gamma = 8.0 * static_cast<double>(n) * static_cast<double>(di) *
                         static_cast<double>(dout);
    const auto tile_bytes = static_cast<std::int64_t>(
        std::min({static_cast<double>(budget), 64.0 * (1 << 20), std::max(gamma / 2, 8.0)}));
    const Tiles tl = worker_tiles(n, t, di, dout, tile_bytes);
    const auto tile = fisher_scratch(n * tl.r * tl.q);
    Scratch parts;
    std::vector<char> written;
    int workers = 1;
    {
        BlasWorkers region(static_cast<int>(std::min<std::int64_t>(n, 64)));
        workers = region.workers();
        parts = fisher_scratch((workers - 1) * n * n);
        // Gram tasks of 256 columns or more, about four per worker and tile.
        const std::int64_t slice =
            std::max<std::int64_t>(256, (tl.r * tl.q + 4 * workers - 1) / (4 * workers));
        const std::int64_t phases = 2 * ((dout + tl.q - 1) / tl.q) * ((di + tl.r - 1) / tl.r);
        Shared sh{a,
                  d,
                  tl,
                  slice,
                  tile.get(),
                  bias ? sums.data() : nullptr,
                  {k.data()},
                  std::vector<char>(static_cast<std::size_t>(workers), 0),
                  std::make_unique<std::atomic<std::int64_t>[]>(static_cast<std::size_t>(phases)),
                  Barrier(workers)};
        for (int w = 1; w < workers; ++w) sh.k.push_back(parts.get() + (w - 1) * n * n);
        parallel_rows(workers, workers, [&sh](std::int64_t w0, std::int64_t w1) {
            for (std::int64_t w = w0; w < w1; ++w) {
                try {
                    run_worker(sh, static_cast<int>(w));
                } catch (...) {
                    sh.barrier.abort();
                    throw;
                }
            }
        });
        written = std::move(sh.written);
    }
    if (!written[0]) k.setZero();  // a tile narrower than the workers left K_0 unwritten
    FinishTerms terms;
    for (std::size_t w = 1; w < written.size(); ++w)
        if (written[w])
            terms.addends.push_back(parts.get() + static_cast<std::int64_t>(w - 1) * n * n);
    // The bias block (Σ_t δ_it)·(Σ_s δ_js), then K = (K_0 + Σ_w K_w)/N by the workers.
    if (bias) syrk_lower_ld(n, dout, 1.0, sums.data(), dout, 1.0, k.data(), n);
    fisher_finish(k, 1.0 / static_cast<double>(n), false, terms, workers);
    return k;
}

}  // namespace deadspec::detail
