// SPDX-License-Identifier: Apache-2.0
// The fused DDCAdam block step: one pass reading x, g, σ, m, v and writing x, m, v.
#include "deadspec/ddc.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "detail/core.hpp"
#include "detail/ddc_checks.hpp"
#include "detail/ddc_kernels.hpp"
#include "detail/workers.hpp"

namespace deadspec {

namespace {

// How σ is given along a row: not at all (σ = 1), as a vector `sig` (σ_j), as the product of a
// row factor `r` and a column vector `sig` (σ_j = r·c_j, formed in the loop: the same product a
// materialised σ row holds) or as the row factor alone (σ_j = r).
enum SigmaMode { kSigmaNone = 0, kSigmaVec = 1, kSigmaRowCol = 2, kSigmaRow = 3 };

template <int Mode, typename T>
DEADSPEC_ALWAYS_INLINE T sigma_at(const T* __restrict sig, T r, std::int64_t j) {
    if constexpr (Mode == kSigmaVec) return sig[j];
    else if constexpr (Mode == kSigmaRowCol) return r * sig[j];
    else return r;
}

// One row of the step (the rows of a block are independent). σ along the row as `Mode` says;
// `g` is contiguous. Inlined into a baseline, an AVX2 and an AVX-512 wrapper (ddc_kernels.hpp).
// Each element's new x, m and v are checked before they are written (detail::commit): an
// element whose new values are not all finite keeps its pre-step x, m and v. Returns the number
// of such elements (0 in a step that overflows nowhere, whose result the check leaves alone).
template <bool Keep, int Mode, typename T>
DEADSPEC_ALWAYS_INLINE detail::CommitCount<T> step_row_loop(
    T* __restrict xi, T* __restrict mi, T* __restrict vi, const T* __restrict gi,
    const T* __restrict sig, T r, std::int64_t cols, T decay, T b1, T b2, T inv_bc2_sqrt,
    T step_size, T eps) {
    const T one = T(1);
    detail::CommitCount<T> refused = 0;
    if constexpr (Mode == kSigmaNone) {
        for (std::int64_t j = 0; j < cols; ++j) {
            const T gt = gi[j];
            const T mk = b1 * mi[j] + (one - b1) * gt;
            const T vk = b2 * vi[j] + (one - b2) * gt * gt;
            const T xk = xi[j] * decay - step_size * (mk / (std::sqrt(vk) * inv_bc2_sqrt + eps));
            refused += detail::commit<Keep>(xi[j], mi[j], vi[j], xk, mk, vk);
        }
        return refused;
    } else {
// (ivdep: see over_lanes in ddc_split_rows.cpp)
#pragma GCC ivdep
        for (std::int64_t j = 0; j < cols; ++j) {
            const T s = sigma_at<Mode>(sig, r, j);
            const T gt = gi[j] * s;
            const T mk = b1 * mi[j] + (one - b1) * gt;
            const T vk = b2 * vi[j] + (one - b2) * gt * gt;
            const T xk =
                xi[j] * decay - step_size * (mk / (std::sqrt(vk) * inv_bc2_sqrt + eps)) * s;
            refused += detail::commit<Keep>(xi[j], mi[j], vi[j], xk, mk, vk);
        }
        return refused;
    }
}

#define DEADSPEC_STEP_ROW_ARGS                                                                  \
    T *xi, T *mi, T *vi, const T *gi, const T *sig, T r, std::int64_t cols, T decay, T b1, T b2, \
        T inv_bc2_sqrt, T step_size, T eps
#define DEADSPEC_STEP_ROW_CALL \
    step_row_loop<Keep, Mode, T>(xi, mi, vi, gi, sig, r, cols, decay, b1, b2, inv_bc2_sqrt, \
                                 step_size, eps)

// The baseline, AVX2 and AVX-512 versions of a loop (NAME_base, NAME_avx2, NAME_avx512: the
// same loop inlined into wrappers of each target, chosen at run time by the dispatchers below).
// TPL, ARGS and CALL name macros: the template head, the parameters and the loop's call.
#ifdef DEADSPEC_DDC_AVX2
#define DEADSPEC_ISA_VERSIONS(TPL, RET, NAME, ARGS, CALL)                       \
    TPL RET NAME##_base(ARGS) { return CALL; }                                   \
    TPL __attribute__((target("avx2"))) RET NAME##_avx2(ARGS) { return CALL; }  \
    TPL DEADSPEC_DDC_AVX512 RET NAME##_avx512(ARGS) { return CALL; }
#else
#define DEADSPEC_ISA_VERSIONS(TPL, RET, NAME, ARGS, CALL) \
    TPL RET NAME##_base(ARGS) { return CALL; }
#endif
#define DEADSPEC_TPL_KEEP_MODE template <bool Keep, int Mode, typename T>
#define DEADSPEC_TPL_MODE_SUM template <int Mode, bool Sum, typename T>

DEADSPEC_ISA_VERSIONS(DEADSPEC_TPL_KEEP_MODE, detail::CommitCount<T>, step_row,
                      DEADSPEC_STEP_ROW_ARGS, DEADSPEC_STEP_ROW_CALL)

// One row, in chunks of at most kCommitChunk elements (the count type's range), on the ISA chosen
// at run time; returns the elements refused.
template <bool Keep, int Mode, typename T>
std::int64_t step_row(T* xi, T* mi, T* vi, const T* gi, const T* sig, T r, std::int64_t cols,
                      T decay, T b1, T b2, T inv_bc2_sqrt, T step_size, T eps) {
    std::int64_t refused = 0;
    for (std::int64_t j = 0; j < cols; j += detail::kCommitChunk) {
        const std::int64_t n = std::min(cols - j, detail::kCommitChunk);
        const T* sj = sig == nullptr ? nullptr : sig + j;
#ifdef DEADSPEC_DDC_AVX2
        if (detail::has_avx512()) {
            refused += step_row_avx512<Keep, Mode, T>(xi + j, mi + j, vi + j, gi + j, sj, r, n,
                                                      decay, b1, b2, inv_bc2_sqrt, step_size, eps);
            continue;
        }
        if (detail::has_avx2()) {
            refused += step_row_avx2<Keep, Mode, T>(xi + j, mi + j, vi + j, gi + j, sj, r, n, decay,
                                                    b1, b2, inv_bc2_sqrt, step_size, eps);
            continue;
        }
#endif
        refused += step_row_base<Keep, Mode, T>(xi + j, mi + j, vi + j, gi + j, sj, r, n, decay, b1,
                                                b2, inv_bc2_sqrt, step_size, eps);
    }
    return refused;
}

// Rotated rows with σ formed in registers (Mode, as step_row): the second-moment input
// (1−β₂)·g̃² of a row stored into g2, or (Sum) added to it (a head's rows, in row order); and
// the step of a row from g2, g̃ = g·σ formed again. The same products, in the same order, as
// the path that stored the scaled rows before (sigma_row's σ, then g·σ): the same bits.
template <int Mode, bool Sum, typename T>
DEADSPEC_ALWAYS_INLINE void g2_sq_loop(const T* __restrict gi, const T* __restrict sig, T r,
                                       T w2, T* __restrict g2, std::int64_t cols) {
    // (ivdep: see over_lanes in ddc_split_rows.cpp)
#pragma GCC ivdep
    for (std::int64_t j = 0; j < cols; ++j) {
        const T gt = Mode == kSigmaNone ? gi[j] : gi[j] * sigma_at<Mode>(sig, r, j);
        const T q = (w2 * gt) * gt;
        if constexpr (Sum) g2[j] += q;
        else g2[j] = q;
    }
}

template <bool Keep, int Mode, typename T>
DEADSPEC_ALWAYS_INLINE detail::CommitCount<T> g2_step_loop(
    T* __restrict xi, T* __restrict mi, T* __restrict vi, const T* __restrict gi,
    const T* __restrict g2, const T* __restrict sig, T r, std::int64_t cols, T decay, T b1, T b2,
    T inv_bc2_sqrt, T step_size, T eps) {
    const T one = T(1);
    detail::CommitCount<T> refused = 0;
#pragma GCC ivdep
    for (std::int64_t j = 0; j < cols; ++j) {
        const T s = sigma_at<Mode>(sig, r, j);
        const T gt = Mode == kSigmaNone ? gi[j] : gi[j] * s;
        const T mk = b1 * mi[j] + (one - b1) * gt;
        const T vk = b2 * vi[j] + g2[j];
        const T q = step_size * (mk / (std::sqrt(vk) * inv_bc2_sqrt + eps));
        const T xk = xi[j] * decay - (Mode == kSigmaNone ? q : q * s);
        refused += detail::commit<Keep>(xi[j], mi[j], vi[j], xk, mk, vk);
    }
    return refused;
}

#define DEADSPEC_G2_SQ_ARGS const T *gi, const T *sig, T r, T w2, T *g2, std::int64_t cols
#define DEADSPEC_G2_STEP_ARGS                                                                   \
    T *xi, T *mi, T *vi, const T *gi, const T *g2, const T *sig, T r, std::int64_t cols, T decay, \
        T b1, T b2, T inv_bc2_sqrt, T step_size, T eps
#define DEADSPEC_G2_STEP_CALL \
    g2_step_loop<Keep, Mode, T>(xi, mi, vi, gi, g2, sig, r, cols, decay, b1, b2, inv_bc2_sqrt, \
                                step_size, eps)

#define DEADSPEC_G2_SQ_CALL g2_sq_loop<Mode, Sum, T>(gi, sig, r, w2, g2, cols)

DEADSPEC_ISA_VERSIONS(DEADSPEC_TPL_MODE_SUM, void, g2_sq, DEADSPEC_G2_SQ_ARGS, DEADSPEC_G2_SQ_CALL)
DEADSPEC_ISA_VERSIONS(DEADSPEC_TPL_KEEP_MODE, detail::CommitCount<T>, g2_step,
                      DEADSPEC_G2_STEP_ARGS, DEADSPEC_G2_STEP_CALL)

template <int Mode, bool Sum, typename T>
void g2_sq(DEADSPEC_G2_SQ_ARGS) {
#ifdef DEADSPEC_DDC_AVX2
    if (detail::has_avx512()) return g2_sq_avx512<Mode, Sum, T>(gi, sig, r, w2, g2, cols);
    if (detail::has_avx2()) return g2_sq_avx2<Mode, Sum, T>(gi, sig, r, w2, g2, cols);
#endif
    g2_sq_base<Mode, Sum, T>(gi, sig, r, w2, g2, cols);
}

// (in chunks of at most kCommitChunk elements, as step_row)
template <bool Keep, int Mode, typename T>
std::int64_t g2_step(T* xi, T* mi, T* vi, const T* gi, const T* g2, const T* sig, T r,
                     std::int64_t cols, T decay, T b1, T b2, T inv_bc2_sqrt, T step_size, T eps) {
    std::int64_t refused = 0;
    for (std::int64_t j = 0; j < cols; j += detail::kCommitChunk) {
        const std::int64_t n = std::min(cols - j, detail::kCommitChunk);
        const T* sj = sig == nullptr ? nullptr : sig + j;
        auto* f = &g2_step_base<Keep, Mode, T>;
#ifdef DEADSPEC_DDC_AVX2
        if (detail::has_avx512()) f = &g2_step_avx512<Keep, Mode, T>;
        else if (detail::has_avx2()) f = &g2_step_avx2<Keep, Mode, T>;
#endif
        refused += f(xi + j, mi + j, vi + j, gi + j, g2 + j, sj, r, n, decay, b1, b2, inv_bc2_sqrt,
                     step_size, eps);
    }
    return refused;
}

// One block, prepared for stepping any range of its rows (from any thread): typed pointers,
// σ's structure, the column scales and the scalar hyper-parameters resolved once.
template <typename T>
class BlockStep {
public:
    BlockStep(const AdamBlock& b) : m_hp(b.hp) {
        const TensorView& param = b.param;
        const TensorView& grad = b.grad;
        m_x = static_cast<T*>(const_cast<void*>(param.data));
        m_m = static_cast<T*>(const_cast<void*>(b.exp_avg.data));
        m_v = static_cast<T*>(const_cast<void*>(b.exp_avg_sq.data));
        m_g = static_cast<const T*>(grad.data);
        m_scale = b.scale;
        // A 1-D block is one row, σ along it the (1-D) scale.
        const bool two_d = param.ndim() == 2;
        m_rows = two_d ? param.shape[0] : 1;
        m_cols = two_d ? param.shape[1] : param.shape[0];
        m_gs0 = two_d ? grad.stride(0) : 0;
        m_gs1 = two_d ? grad.stride(1) : grad.stride(0);
        m_has_scale = b.scale.data != nullptr;
        m_ss0 = m_has_scale && two_d ? b.scale.stride(0) : 0;
        m_ss1 = m_has_scale ? (two_d ? b.scale.stride(1) : b.scale.stride(0)) : 0;
        m_col = detail::read_vector<T>(b.col_scale);  // (check_adam_block: d entries, 2-D param)
        // a 1-D block is one row: its rotated elements are that row's columns
        m_rot_axis = param.ndim() == 1 && b.rot_axis == 0 ? 1 : b.rot_axis;
        m_segs = b.rot_segments;
        m_keep = b.keep;
    }

    std::int64_t rows() const { return m_rows; }
    /// A block with rotated head segments is stepped as one work item (its row-segment means
    /// need whole segments).
    bool rotated() const { return m_rot_axis >= 0 && !m_segs.empty(); }
    std::int64_t cols() const { return m_cols; }

    /// Steps rows [r0, r1); returns how many elements kept their pre-step values (a new x, m
    /// or v that is not finite).
    std::int64_t operator()(std::int64_t r0, std::int64_t r1) const {
        if (rotated()) return rotated_rows();
        const auto n = static_cast<std::size_t>(m_cols);
        std::vector<T> sig(has_sigma() ? n : 0), gbuf(m_gs1 == 1 ? 0 : n);
        std::int64_t refused = 0;
        for (std::int64_t i = r0; i < r1; ++i) refused += plain_row(i, gbuf, sig);
        return refused;
    }

private:
    bool has_sigma() const { return m_has_scale || !m_col.empty(); }

    // Row i of the gradient, contiguous (gathered into `buf` when strided).
    const T* grad_row(std::int64_t i, std::vector<T>& buf) const {
        return detail::gather_row(m_g, i, m_gs0, m_gs1, m_cols, buf);
    }

    // σ along row i in `sig` (null for σ = 1).
    const T* sigma_row(std::int64_t i, std::vector<T>& sig) const {
        if (!has_sigma()) return nullptr;
        sig.resize(static_cast<std::size_t>(m_cols));
        if (m_has_scale) {
            if (m_ss1 == 0) {  // σ constant along the row
                std::fill(sig.begin(), sig.end(), detail::element<T>(m_scale, i * m_ss0));
            } else {
                for (std::size_t j = 0; j < sig.size(); ++j)
                    sig[j] = detail::element<T>(
                        m_scale, i * m_ss0 + static_cast<std::int64_t>(j) * m_ss1);
            }
            for (std::size_t j = 0; j < m_col.size(); ++j) sig[j] *= m_col[j];
        } else {
            std::copy(m_col.begin(), m_col.end(), sig.begin());
        }
        return sig.data();
    }

    // σ along row i as step_row's modes take it: f(mode, column factors, row factor). A scale
    // that varies along the row is materialised in `buf` (sigma_row) and taken as a vector;
    // otherwise σ is formed in the loops (σ_j = r_i·c_j, r_i or c_j: the products sigma_row
    // would store).
    template <typename F>
    decltype(auto) by_sigma(std::int64_t i, std::vector<T>& buf, F&& f) const {
        using std::integral_constant;
        if (!has_sigma()) return f(integral_constant<int, kSigmaNone>{}, nullptr, T(1));
        if (!m_has_scale) return f(integral_constant<int, kSigmaVec>{}, m_col.data(), T(1));
        if (m_ss1 != 0) return f(integral_constant<int, kSigmaVec>{}, sigma_row(i, buf), T(1));
        const T r = detail::element<T>(m_scale, i * m_ss0);
        if (m_col.empty()) return f(integral_constant<int, kSigmaRow>{}, nullptr, r);
        return f(integral_constant<int, kSigmaRowCol>{}, m_col.data(), r);
    }

    // The head-rotation variant: within each rotated segment (rows for axis 0, columns for
    // axis 1) the second-moment input (1−β₂)·g̃² is replaced by its mean over the segment, so v
    // is invariant under a rotation of the segment and m/(√v + ε) rotates with the gradient.
    // Two loops per row (g2_sq, g2_step), σ formed in registers.
    std::int64_t rotated_rows() const {
        const auto n = static_cast<std::size_t>(m_cols);
        const T w2 = T(1) - m_hp.b2;
        std::vector<T> gbuf, sig, g2(n);
        std::int64_t refused = 0;
        auto sq = [&](std::int64_t i, bool sum) {
            const T* gi = grad_row(i, gbuf);
            by_sigma(i, sig, [&](auto mode, const T* c, T r) {
                constexpr int M = decltype(mode)::value;
                if (sum) g2_sq<M, true, T>(gi, c, r, w2, g2.data(), m_cols);
                else g2_sq<M, false, T>(gi, c, r, w2, g2.data(), m_cols);
            });
        };
        auto step = [&](std::int64_t i) {
            const T* gi = grad_row(i, gbuf);
            T *x = m_x + i * m_cols, *m = m_m + i * m_cols, *v = m_v + i * m_cols;
            const auto& h = m_hp;
            return by_sigma(i, sig, [&](auto mode, const T* c, T r) {
                constexpr int M = decltype(mode)::value;
                return m_keep ? g2_step<true, M, T>(x, m, v, gi, g2.data(), c, r, m_cols, h.decay,
                                                    h.b1, h.b2, h.inv_bc2_sqrt, h.step_size, h.eps)
                              : g2_step<false, M, T>(x, m, v, gi, g2.data(), c, r, m_cols,
                                                     h.decay, h.b1, h.b2, h.inv_bc2_sqrt,
                                                     h.step_size, h.eps);
            });
        };
        if (m_rot_axis == 1) {
            for (std::int64_t i = 0; i < m_rows; ++i) {
                sq(i, false);
                detail::mean_within_segments(g2.data(), m_segs);
                refused += step(i);
            }
            return refused;
        }
        std::vector<char> in_seg(static_cast<std::size_t>(m_rows), 0);
        for (const auto& [a, b] : m_segs)
            for (std::int64_t i = a; i < b; ++i) in_seg[static_cast<std::size_t>(i)] = 1;
        for (std::int64_t i = 0; i < m_rows; ++i)
            if (!in_seg[static_cast<std::size_t>(i)]) refused += plain_row(i, gbuf, sig);
        for (const auto& [a, b] : m_segs) {
            std::fill(g2.begin(), g2.end(), T(0));
            for (std::int64_t i = a; i < b; ++i) sq(i, true);
            for (std::size_t j = 0; j < n; ++j) g2[j] /= static_cast<T>(b - a);
            for (std::int64_t i = a; i < b; ++i) refused += step(i);
        }
        return refused;
    }

    std::int64_t plain_row(std::int64_t i, std::vector<T>& gbuf, std::vector<T>& sig) const {
        const T* gi = grad_row(i, gbuf);
        return by_sigma(i, sig, [&](auto mode, const T* c, T r) {
            return row_as<decltype(mode)::value>(i, gi, c, r);
        });
    }

    template <int Mode>
    std::int64_t row_as(std::int64_t i, const T* gi, const T* sig, T r) const {
        T *x = m_x + i * m_cols, *m = m_m + i * m_cols, *v = m_v + i * m_cols;
        const auto& h = m_hp;
        return m_keep ? step_row<true, Mode, T>(x, m, v, gi, sig, r, m_cols, h.decay, h.b1, h.b2,
                                                h.inv_bc2_sqrt, h.step_size, h.eps)
                      : step_row<false, Mode, T>(x, m, v, gi, sig, r, m_cols, h.decay, h.b1,
                                                 h.b2, h.inv_bc2_sqrt, h.step_size, h.eps);
    }

    T *m_x = nullptr, *m_m = nullptr, *m_v = nullptr;
    const T* m_g = nullptr;
    TensorView m_scale;
    std::int64_t m_rows = 0, m_cols = 0, m_gs0 = 0, m_gs1 = 0, m_ss0 = 0, m_ss1 = 0;
    bool m_has_scale = false;
    std::vector<T> m_col;
    detail::AdamScalars<T> m_hp;
    int m_rot_axis = -1;
    std::vector<std::pair<std::int64_t, std::int64_t>> m_segs;
    bool m_keep = true;
};

// Work items of about this many elements (whole rows) are shared out over the threads.
constexpr std::int64_t kChunkElements = std::int64_t(1) << 15;

}  // namespace

void ddc_adam_update(const TensorView& param, const TensorView& grad, const TensorView& exp_avg,
                     const TensorView& exp_avg_sq, const TensorView& scale, const AdamStep& hp) {
    ddc_adam_update(param, grad, exp_avg, exp_avg_sq, scale, TensorView{}, hp);
}

void ddc_adam_update(const TensorView& param, const TensorView& grad, const TensorView& exp_avg,
                     const TensorView& exp_avg_sq, const TensorView& scale,
                     const TensorView& col_scale, const AdamStep& hp) {
    ddc_adam_update_many({AdamBlock{param, grad, exp_avg, exp_avg_sq, scale, col_scale, hp, -1, {}}});
}

void ddc_adam_update_many(const std::vector<AdamBlock>& blocks) {
    std::vector<std::int64_t> refused;
    ddc_adam_update_many(blocks, refused);
    for (std::size_t k = 0; k < refused.size(); ++k)
        if (refused[k] > 0)
            throw Error(detail::concat(
                "deadspec.ddc_adam_update: the step must produce finite values, got ",
                refused[k], " element(s) of block ", k,
                " whose new parameter or moments overflowed (they keep their pre-step values)"));
}

void ddc_adam_update_many(const std::vector<AdamBlock>& blocks,
                          std::vector<std::int64_t>& refused) {
    // Validate everything before writing anything: a bad block leaves every block untouched.
    for (const AdamBlock& b : blocks) detail::check_adam_block(b);
    detail::adam_update_many(blocks, refused, detail::kParallelElements);
}

namespace detail {

void adam_update_many(const std::vector<AdamBlock>& blocks, std::vector<std::int64_t>& refused,
                      std::int64_t min_parallel, Workers* workers) {
    refused.assign(blocks.size(), 0);
    std::vector<std::function<std::int64_t(std::int64_t, std::int64_t)>> steps;
    struct Item {
        std::size_t block, step;
        std::int64_t r0, r1;
    };
    std::vector<Item> items;
    std::int64_t total = 0;
    for (std::size_t k = 0; k < blocks.size(); ++k) {
        const AdamBlock& b = blocks[k];
        if (b.param.numel() == 0) continue;
        std::int64_t rows = 0, cols = 0;
        if (b.param.dtype == DType::Float64) {
            auto s = std::make_shared<BlockStep<double>>(b);
            rows = s->rows(), cols = s->cols();
            steps.emplace_back([s](std::int64_t r0, std::int64_t r1) { return (*s)(r0, r1); });
        } else {
            auto s = std::make_shared<BlockStep<float>>(b);
            rows = s->rows(), cols = s->cols();
            steps.emplace_back([s](std::int64_t r0, std::int64_t r1) { return (*s)(r0, r1); });
        }
        // a block with rotated segments is one item (its segment means need whole segments)
        const bool whole = b.rot_axis >= 0 && !b.rot_segments.empty();
        const std::int64_t per =
            whole ? rows : std::max<std::int64_t>(1, kChunkElements / std::max<std::int64_t>(cols, 1));
        for (std::int64_t r = 0; r < rows; r += per)
            items.push_back({k, steps.size() - 1, r, std::min(rows, r + per)});
        total += rows * cols;
    }
    const auto n_items = static_cast<std::int64_t>(items.size());
    const int threads = detail::worker_threads(total, min_parallel, n_items);
    // Items are taken in order from a shared counter: every item is one row range of one block,
    // written by exactly one thread, so the result does not depend on the scheduling. Each item
    // counts its refused elements in its own slot.
    std::vector<std::int64_t> per_item(items.size(), 0);
    std::atomic<std::int64_t> next{0};
    auto work = [&] {
        for (std::int64_t k = next++; k < n_items; k = next++) {
            const auto i = static_cast<std::size_t>(k);
            per_item[i] = steps[items[i].step](items[i].r0, items[i].r1);
        }
    };
    if (workers != nullptr)
        workers->run(threads, [&](int) { work(); });
    else
        detail::parallel_rows(threads, threads, [&](std::int64_t, std::int64_t) { work(); });
    for (std::size_t i = 0; i < items.size(); ++i) refused[items[i].block] += per_item[i];
}

std::int64_t adam_rows(const AdamBlock& b, std::int64_t r0, std::int64_t r1) {
    if (b.param.dtype == DType::Float64) return BlockStep<double>(b)(r0, r1);
    return BlockStep<float>(b)(r0, r1);
}

}  // namespace detail

}  // namespace deadspec
