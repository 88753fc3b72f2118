// SPDX-License-Identifier: Apache-2.0
// Stage 1 of the two-stage tridiagonal reduction: a dense symmetric matrix to a band of kd
// subdiagonals by orthogonal similarity, on a team of threads (detail/team.hpp).
//
// LAPACK's dsytrd_sy2sb does the same with the BLAS threading each call. It is not used here
// because OpenBLAS's idle threads busy-wait for about 0.1 s after each threaded call: the bulge
// chase that follows on the same cores measured 0.114 s instead of 0.043 s at n = 2048
// (bench/README.md, "Spectra"). Here OpenBLAS runs single-threaded and the team splits the two
// large products of each step into blocks of rows or columns; the blocks depend on n and kd
// only, so the result is the same bit for bit for any number of threads.
//
// The matrix A is given by the upper triangle of a column-major array (the lower triangle of
// the row-major one, without a transposed copy). Step i (columns i..i+kd−1):
//   1. QR of the panel A(i+kd:n, i:i+kd) = V·R, Q = I − V·T·Vᵀ (LAPACK dgeqrt3);
//      the panel's band part goes to AB;
//   2. W = A22·V·T with A22 = A(i+kd:n, i+kd:n), then W −= ½·V·(Tᵀ·Vᵀ·A22·V·T);
//   3. A22 −= V·Wᵀ + W·Vᵀ, which is Qᵀ·A22·Q.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "detail/band_tridiag.hpp"
#include "detail/blas_names.hpp"
#include "detail/core.hpp"
#include "detail/team.hpp"

#ifdef DEADSPEC_HAVE_LAPACK
extern "C" void DS_BLAS(dgeqrt3_)(const blasint* m, const blasint* n, double* a,
                                  const blasint* lda, double* t, const blasint* ldt,
                                  blasint* info);

namespace deadspec::detail {
namespace {

// Rows (or columns) per block of the products split over the team (256 measured faster than
// 128 and 512 at n = 2048).
constexpr std::int64_t kBlock = 256;

// One step's factors: the panel P (pn × kd, column-major, ld pn) holding V and R after the QR;
// T; S = V·T; X = [V W] and Y = [W V] (pn × 2pk each, ld pn); U = Sᵀ·W (kd × kd scratch).
struct Step {
    std::vector<double> p, t, s, x, y, u;
};

struct Reduce {
    std::int64_t n, kd, ld;
    double* a;    // the matrix, upper triangle, column-major (overwritten)
    double* ab;   // the band, lower band storage, kd + 1 rows
    Step step[2];  // by step parity: the next step's panel is factored during this step's update
    // The next block to take in a split product, on a cache line of its own (the fields
    // above are read by every member all the time).
    alignas(64) std::atomic<std::int64_t> next{0};
    char pad[64 - sizeof(std::atomic<std::int64_t>)] = {};
};

constexpr auto bi = &to_blasint;

// Member 0: the QR of step i's panel (its first pk columns; pk < kd at the last step, where Qᵀ
// is then applied to the remaining columns, as in dsytrd_sy2sb), its band columns, V and S.
void panel(Reduce& r, Step& f, std::int64_t i) {
    const std::int64_t n = r.n, kd = r.kd, ld = r.ld, pn = n - i - kd, pk = std::min(pn, kd);
    double* p = f.p.data();  // pn × kd
    for (std::int64_t q = 0; q < pn; ++q)  // P(q, c) = A(i+kd+q, i+c) = a(i+c, i+kd+q)
        for (std::int64_t c = 0; c < kd; ++c) p[c * pn + q] = r.a[(i + kd + q) * ld + i + c];
    const blasint m = bi(pn), k = bi(pk), ldt = bi(kd);
    blasint info = 0;
    DS_BLAS(dgeqrt3_)(&m, &k, p, &m, f.t.data(), &ldt, &info);
    double* x = f.x.data();
    double* y = f.y.data();
    for (std::int64_t c = 0; c < pk; ++c)
        for (std::int64_t q = 0; q < pn; ++q) {
            const double v = q < c ? 0.0 : q == c ? 1.0 : p[c * pn + q];
            x[c * pn + q] = v;         // X = [V .]
            y[(pk + c) * pn + q] = v;  // Y = [. V]
            f.s[static_cast<std::size_t>(c * pn + q)] = v;
        }
    if (pk < kd) {  // P(:, pk:kd) = Qᵀ·P(:, pk:kd) = P − V·(Tᵀ·(Vᵀ·P)), U as scratch
        const blasint nc = bi(kd - pk);
        double* c = p + pk * pn;
        DS_BLAS(cblas_dgemm)(CblasColMajor, CblasTrans, CblasNoTrans, k, nc, m, 1.0, x, m, c, m,
                             0.0, f.u.data(), k);
        DS_BLAS(cblas_dtrmm)(CblasColMajor, CblasLeft, CblasUpper, CblasTrans, CblasNonUnit, k,
                             nc, 1.0, f.t.data(), ldt, f.u.data(), k);
        DS_BLAS(cblas_dgemm)(CblasColMajor, CblasNoTrans, CblasNoTrans, m, nc, k, -1.0, x, m,
                             f.u.data(), k, 1.0, c, m);
    }
    for (std::int64_t c = 0; c < kd; ++c) {  // band column j: A(j+s, j), s <= kd
        const std::int64_t j = i + c;
        double* col = r.ab + j * (kd + 1);
        for (std::int64_t s = 0; s <= std::min(kd, n - 1 - j); ++s)
            col[s] = j + s < i + kd ? r.a[(j + s) * ld + j] : p[c * pn + (j + s - i - kd)];
    }
    DS_BLAS(cblas_dtrmm)(CblasColMajor, CblasRight, CblasUpper, CblasNoTrans, CblasNonUnit, m, k,
                         1.0, f.t.data(), ldt, f.s.data(), m);
}

// Rows [r0, r1) of W = A22·S, A22 symmetric (upper triangle stored, at a22, ld), into X(:, pk:).
void w_rows(const Reduce& r, Step& f, const double* a22, std::int64_t pn, std::int64_t pk,
            std::int64_t r0, std::int64_t r1) {
    const blasint ld = bi(r.ld), m = bi(r1 - r0), k = bi(pk), lp = bi(pn);
    const double* s = f.s.data();
    double* w = f.x.data() + pk * pn;
    DS_BLAS(cblas_dsymm)(CblasColMajor, CblasLeft, CblasUpper, m, k, 1.0, a22 + r0 * r.ld + r0,
                         ld, s + r0, lp, 0.0, w + r0, lp);
    if (r1 < pn)  // A22(r0:r1, r1:pn), stored
        DS_BLAS(cblas_dgemm)(CblasColMajor, CblasNoTrans, CblasNoTrans, m, k, bi(pn - r1), 1.0,
                             a22 + r1 * r.ld + r0, ld, s + r1, lp, 1.0, w + r0, lp);
    if (r0 > 0)  // A22(r0:r1, 0:r0) = A22(0:r0, r0:r1)ᵀ
        DS_BLAS(cblas_dgemm)(CblasColMajor, CblasTrans, CblasNoTrans, m, k, bi(r0), 1.0,
                             a22 + r0 * r.ld, ld, s, lp, 1.0, w + r0, lp);
}

// Rows [r0, r1) of columns [c0, c1) (r1 <= c1) of the upper triangle of A22 −= X·Yᵀ
// (= V·Wᵀ + W·Vᵀ): a product above the diagonal block, a rank-2k update on it when r1 > c0.
void update(const Reduce& r, const Step& f, double* a22, std::int64_t pn, std::int64_t pk,
            std::int64_t r0, std::int64_t r1, std::int64_t c0, std::int64_t c1) {
    const blasint ld = bi(r.ld), nc = bi(c1 - c0), k = bi(pk), lp = bi(pn);
    const double* x = f.x.data();
    const double* y = f.y.data();
    const std::int64_t above = std::min(r1, c0);
    if (above > r0)
        DS_BLAS(cblas_dgemm)(CblasColMajor, CblasNoTrans, CblasTrans, bi(above - r0), nc,
                             bi(2 * pk), -1.0, x + r0, lp, y + c0, lp, 1.0,
                             a22 + c0 * r.ld + r0, ld);
    if (r1 > c0)
        DS_BLAS(cblas_dsyr2k)(CblasColMajor, CblasUpper, CblasNoTrans, nc, k, -1.0, x + c0, lp,
                              x + pk * pn + c0, lp, 1.0, a22 + c0 * r.ld + c0, ld);
}

// Blocks [0, count) taken by the members in turn (each exactly once), block b from the back
// when `from_back` (the update's blocks grow with their index: the large ones go first). The
// team's counter only grows: this split's blocks are numbers base.., and every member stops
// at its first number past them, so the next split starts at base + count + team size.
template <typename F>
void split(Reduce& r, std::int64_t& base, std::int64_t count, int members, bool from_back,
           F&& f) {
    for (std::int64_t b; (b = r.next.fetch_add(1, std::memory_order_relaxed) - base) < count;)
        f(from_back ? count - 1 - b : b);
    base += count + members;
}

// Member 0, between the two products: U = Sᵀ·W; W −= ½·V·U; Y = [W .].
void finish_w(Step& f, std::int64_t pn, std::int64_t pk, std::int64_t kd) {
    const blasint lp = bi(pn), k = bi(pk), ldk = bi(kd);
    double* w = f.x.data() + pk * pn;
    DS_BLAS(cblas_dgemm)(CblasColMajor, CblasTrans, CblasNoTrans, k, k, lp, 1.0, f.s.data(), lp,
                         w, lp, 0.0, f.u.data(), ldk);
    DS_BLAS(cblas_dgemm)(CblasColMajor, CblasNoTrans, CblasNoTrans, lp, k, k, -0.5, f.x.data(),
                         lp, f.u.data(), ldk, 1.0, w, lp);
    std::copy(w, w + pk * pn, f.y.data());
}

// Step i's update is split in two: the first kd rows of A22 (the next step's panel and its
// diagonal block), which member 0 updates and then factors while the others update the rest
// (columns kd.., rows kd.., by blocks of columns), and the rest, which member 0 joins after.
void reduce_member(Reduce& r, Team& team, int member) {
    const std::int64_t n = r.n, kd = r.kd;
    const int members = team.size();
    std::int64_t base = 0;
    if (member == 0 && n > kd) panel(r, r.step[0], 0);
    team.barrier();
    for (std::int64_t i = 0, parity = 0; i < n - kd; i += kd, parity ^= 1) {
        Step& f = r.step[parity];
        const std::int64_t pn = n - i - kd, pk = std::min(pn, kd), head = std::min(pn, kd);
        const std::int64_t rows = (pn + kBlock - 1) / kBlock;
        const std::int64_t cols = (pn - head + kBlock - 1) / kBlock;
        double* a22 = r.a + (i + kd) * r.ld + i + kd;
        split(r, base, rows, members, false, [&](std::int64_t b) {
            w_rows(r, f, a22, pn, pk, b * kBlock, std::min(pn, (b + 1) * kBlock));
        });
        team.barrier();
        if (member == 0) finish_w(f, pn, pk, kd);
        team.barrier();
        if (member == 0) {  // the next panel first
            update(r, f, a22, pn, pk, 0, head, 0, head);
            if (pn > head) update(r, f, a22, pn, pk, 0, head, head, pn);
            if (i + kd < n - kd) panel(r, r.step[parity ^ 1], i + kd);
        }
        split(r, base, cols, members, true, [&](std::int64_t b) {
            const std::int64_t c0 = head + b * kBlock, c1 = std::min(pn, c0 + kBlock);
            update(r, f, a22, pn, pk, head, c1, c0, c1);
        });
        team.barrier();
    }
}

}  // namespace

void reduce_to_band_upper(double* a, std::int64_t n, std::int64_t ld, std::int64_t kd,
                          double* ab, Team& team) {
    Reduce r{n, kd, ld, a, ab, {}, {}};
    const auto sz = [](std::int64_t v) { return static_cast<std::size_t>(v); };
    for (Step& f : r.step) {
        f.p.resize(sz(n * kd));
        f.t.resize(sz(kd * kd));
        f.s.resize(sz(n * kd));
        f.x.resize(sz(2 * n * kd));
        f.y.resize(sz(2 * n * kd));
        f.u.resize(sz(kd * kd));
    }
    team.run([&](int member) { reduce_member(r, team, member); });
    // The columns after the last step's panel: their band lies in the last A22, final now.
    const std::int64_t done = n > kd ? ((n - kd - 1) / kd + 1) * kd : 0;  // panels' columns
    for (std::int64_t j = done; j < n; ++j)
        for (std::int64_t s = 0; s <= std::min(kd, n - 1 - j); ++s)
            ab[j * (kd + 1) + s] = a[(j + s) * ld + j];
}

}  // namespace deadspec::detail
#endif  // DEADSPEC_HAVE_LAPACK
