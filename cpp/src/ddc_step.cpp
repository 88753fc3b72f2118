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

namespace deadspec {

namespace {

// One row of the step (the rows of a block are independent). `sig` is σ along the row (null
// for σ = 1); `g` is contiguous. Inlined into a baseline and an AVX2 wrapper (ddc_kernels.hpp).
template <typename T>
DEADSPEC_ALWAYS_INLINE void step_row_loop(
    T* __restrict xi, T* __restrict mi, T* __restrict vi, const T* __restrict gi,
    const T* __restrict sig, std::int64_t cols, T decay, T b1, T b2, T inv_bc2_sqrt,
    T step_size, T eps) {
    const T one = T(1);
    if (sig == nullptr) {
        for (std::int64_t j = 0; j < cols; ++j) {
            const T gt = gi[j];
            const T mk = b1 * mi[j] + (one - b1) * gt;
            const T vk = b2 * vi[j] + (one - b2) * gt * gt;
            mi[j] = mk;
            vi[j] = vk;
            xi[j] = xi[j] * decay - step_size * (mk / (std::sqrt(vk) * inv_bc2_sqrt + eps));
        }
        return;
    }
    for (std::int64_t j = 0; j < cols; ++j) {
        const T s = sig[j];
        const T gt = gi[j] * s;
        const T mk = b1 * mi[j] + (one - b1) * gt;
        const T vk = b2 * vi[j] + (one - b2) * gt * gt;
        mi[j] = mk;
        vi[j] = vk;
        xi[j] = xi[j] * decay - step_size * (mk / (std::sqrt(vk) * inv_bc2_sqrt + eps)) * s;
    }
}

template <typename T>
void step_row_base(T* xi, T* mi, T* vi, const T* gi, const T* sig, std::int64_t cols, T decay,
                   T b1, T b2, T inv_bc2_sqrt, T step_size, T eps) {
    step_row_loop<T>(xi, mi, vi, gi, sig, cols, decay, b1, b2, inv_bc2_sqrt, step_size, eps);
}

#ifdef DEADSPEC_DDC_AVX2
template <typename T>
__attribute__((target("avx2"))) void step_row_avx2(T* xi, T* mi, T* vi, const T* gi,
                                                   const T* sig, std::int64_t cols, T decay,
                                                   T b1, T b2, T inv_bc2_sqrt, T step_size,
                                                   T eps) {
    step_row_loop<T>(xi, mi, vi, gi, sig, cols, decay, b1, b2, inv_bc2_sqrt, step_size, eps);
}
#endif

template <typename T>
void step_row(T* xi, T* mi, T* vi, const T* gi, const T* sig, std::int64_t cols, T decay, T b1,
              T b2, T inv_bc2_sqrt, T step_size, T eps) {
#ifdef DEADSPEC_DDC_AVX2
    if (detail::has_avx2()) {
        step_row_avx2<T>(xi, mi, vi, gi, sig, cols, decay, b1, b2, inv_bc2_sqrt, step_size, eps);
        return;
    }
#endif
    step_row_base<T>(xi, mi, vi, gi, sig, cols, decay, b1, b2, inv_bc2_sqrt, step_size, eps);
}

// The step with the second-moment input given (`g2`, e.g. g̃² averaged over a rotated head
// block) and the scaled gradient `gt` = g·σ precomputed; `sig` null for σ = 1. Dispatched like
// step_row.
template <typename T>
DEADSPEC_ALWAYS_INLINE void step_row_g2_loop(
    T* __restrict xi, T* __restrict mi, T* __restrict vi, const T* __restrict gt,
    const T* __restrict g2, const T* __restrict sig, std::int64_t cols, T decay, T b1, T b2,
    T inv_bc2_sqrt, T step_size, T eps) {
    const T one = T(1);
    if (sig == nullptr) {
        for (std::int64_t j = 0; j < cols; ++j) {
            const T mk = b1 * mi[j] + (one - b1) * gt[j];
            const T vk = b2 * vi[j] + (one - b2) * g2[j];
            mi[j] = mk;
            vi[j] = vk;
            xi[j] = xi[j] * decay - step_size * (mk / (std::sqrt(vk) * inv_bc2_sqrt + eps));
        }
        return;
    }
    for (std::int64_t j = 0; j < cols; ++j) {
        const T mk = b1 * mi[j] + (one - b1) * gt[j];
        const T vk = b2 * vi[j] + (one - b2) * g2[j];
        mi[j] = mk;
        vi[j] = vk;
        xi[j] = xi[j] * decay - step_size * (mk / (std::sqrt(vk) * inv_bc2_sqrt + eps)) * sig[j];
    }
}

template <typename T>
void step_row_g2_base(T* xi, T* mi, T* vi, const T* gt, const T* g2, const T* sig,
                      std::int64_t cols, T decay, T b1, T b2, T inv_bc2_sqrt, T step_size, T eps) {
    step_row_g2_loop<T>(xi, mi, vi, gt, g2, sig, cols, decay, b1, b2, inv_bc2_sqrt, step_size, eps);
}

#ifdef DEADSPEC_DDC_AVX2
template <typename T>
__attribute__((target("avx2"))) void step_row_g2_avx2(T* xi, T* mi, T* vi, const T* gt,
                                                      const T* g2, const T* sig,
                                                      std::int64_t cols, T decay, T b1, T b2,
                                                      T inv_bc2_sqrt, T step_size, T eps) {
    step_row_g2_loop<T>(xi, mi, vi, gt, g2, sig, cols, decay, b1, b2, inv_bc2_sqrt, step_size, eps);
}
#endif

template <typename T>
void step_row_g2(T* xi, T* mi, T* vi, const T* gt, const T* g2, const T* sig, std::int64_t cols,
                 T decay, T b1, T b2, T inv_bc2_sqrt, T step_size, T eps) {
#ifdef DEADSPEC_DDC_AVX2
    if (detail::has_avx2()) {
        step_row_g2_avx2<T>(xi, mi, vi, gt, g2, sig, cols, decay, b1, b2, inv_bc2_sqrt, step_size,
                            eps);
        return;
    }
#endif
    step_row_g2_base<T>(xi, mi, vi, gt, g2, sig, cols, decay, b1, b2, inv_bc2_sqrt, step_size, eps);
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
    }

    std::int64_t rows() const { return m_rows; }
    /// A block with rotated head segments is stepped as one work item (its row-segment means
    /// need whole segments).
    bool rotated() const { return m_rot_axis >= 0 && !m_segs.empty(); }
    std::int64_t cols() const { return m_cols; }

    void operator()(std::int64_t r0, std::int64_t r1) const {
        if (rotated()) {
            rotated_rows();
            return;
        }
        const auto n = static_cast<std::size_t>(m_cols);
        std::vector<T> sig(has_sigma() ? n : 0), gbuf(m_gs1 == 1 ? 0 : n);
        for (std::int64_t i = r0; i < r1; ++i) plain_row(i, gbuf, sig);
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

    // The head-rotation variant: within each rotated segment (rows for axis 0, columns for
    // axis 1) the second-moment input g̃² is replaced by its mean over the segment, so v is
    // invariant under a rotation of the segment and m/(√v + ε) rotates with the gradient.
    void rotated_rows() const {
        const auto n = static_cast<std::size_t>(m_cols);
        std::vector<T> gbuf, sig, gt(n), g2(n);
        auto scaled = [&](std::int64_t i, T* out_gt, const T** out_sig, std::vector<T>& sbuf) {
            const T* gi = grad_row(i, gbuf);
            const T* si = sigma_row(i, sbuf);
            for (std::size_t j = 0; j < n; ++j) out_gt[j] = si ? gi[j] * si[j] : gi[j];
            *out_sig = si;
        };
        if (m_rot_axis == 1) {
            for (std::int64_t i = 0; i < m_rows; ++i) {
                const T* si = nullptr;
                scaled(i, gt.data(), &si, sig);
                for (std::size_t j = 0; j < n; ++j) g2[j] = gt[j] * gt[j];
                detail::mean_within_segments(g2.data(), m_segs);
                step_row_g2<T>(m_x + i * m_cols, m_m + i * m_cols, m_v + i * m_cols, gt.data(),
                               g2.data(), si, m_cols, m_hp.decay, m_hp.b1, m_hp.b2,
                               m_hp.inv_bc2_sqrt, m_hp.step_size, m_hp.eps);
            }
            return;
        }
        std::vector<char> in_seg(static_cast<std::size_t>(m_rows), 0);
        for (const auto& [a, b] : m_segs)
            for (std::int64_t i = a; i < b; ++i) in_seg[static_cast<std::size_t>(i)] = 1;
        for (std::int64_t i = 0; i < m_rows; ++i)
            if (!in_seg[static_cast<std::size_t>(i)]) plain_row(i, gbuf, sig);
        for (const auto& [a, b] : m_segs) {
            const auto k = static_cast<std::size_t>(b - a);
            std::vector<T> gts(k * n), sigs(has_sigma() ? k * n : 0);
            std::fill(g2.begin(), g2.end(), T(0));
            for (std::size_t r = 0; r < k; ++r) {
                const T* si = nullptr;
                scaled(a + static_cast<std::int64_t>(r), gts.data() + r * n, &si, sig);
                if (si) std::copy(si, si + n, sigs.begin() + static_cast<std::ptrdiff_t>(r * n));
                for (std::size_t j = 0; j < n; ++j) g2[j] += gts[r * n + j] * gts[r * n + j];
            }
            for (std::size_t j = 0; j < n; ++j) g2[j] /= static_cast<T>(k);
            for (std::size_t r = 0; r < k; ++r) {
                const std::int64_t i = a + static_cast<std::int64_t>(r);
                step_row_g2<T>(m_x + i * m_cols, m_m + i * m_cols, m_v + i * m_cols,
                               gts.data() + r * n, g2.data(),
                               sigs.empty() ? nullptr : sigs.data() + r * n, m_cols, m_hp.decay,
                               m_hp.b1, m_hp.b2, m_hp.inv_bc2_sqrt, m_hp.step_size, m_hp.eps);
            }
        }
    }

    void plain_row(std::int64_t i, std::vector<T>& gbuf, std::vector<T>& sig) const {
        const T* gi = grad_row(i, gbuf);
        const T* si = sigma_row(i, sig);
        step_row<T>(m_x + i * m_cols, m_m + i * m_cols, m_v + i * m_cols, gi, si, m_cols,
                    m_hp.decay, m_hp.b1, m_hp.b2, m_hp.inv_bc2_sqrt, m_hp.step_size, m_hp.eps);
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
    // Validate everything before writing anything: a bad block leaves every block untouched.
    for (const AdamBlock& b : blocks) detail::check_adam_block(b);
    std::vector<std::function<void(std::int64_t, std::int64_t)>> steps;
    struct Item {
        std::size_t block;
        std::int64_t r0, r1;
    };
    std::vector<Item> items;
    std::int64_t total = 0;
    for (const AdamBlock& b : blocks) {
        if (b.param.numel() == 0) continue;
        std::int64_t rows = 0, cols = 0;
        if (b.param.dtype == DType::Float64) {
            auto s = std::make_shared<BlockStep<double>>(b);
            rows = s->rows(), cols = s->cols();
            steps.emplace_back([s](std::int64_t r0, std::int64_t r1) { (*s)(r0, r1); });
        } else {
            auto s = std::make_shared<BlockStep<float>>(b);
            rows = s->rows(), cols = s->cols();
            steps.emplace_back([s](std::int64_t r0, std::int64_t r1) { (*s)(r0, r1); });
        }
        // a block with rotated segments is one item (its segment means need whole segments)
        const bool whole = b.rot_axis >= 0 && !b.rot_segments.empty();
        const std::int64_t per =
            whole ? rows : std::max<std::int64_t>(1, kChunkElements / std::max<std::int64_t>(cols, 1));
        for (std::int64_t r = 0; r < rows; r += per)
            items.push_back({steps.size() - 1, r, std::min(rows, r + per)});
        total += rows * cols;
    }
    const auto n_items = static_cast<std::int64_t>(items.size());
    const int threads = detail::worker_threads(total, detail::kParallelElements, n_items);
    // Items are taken in order from a shared counter: every item is one row range of one block,
    // written by exactly one thread, so the result does not depend on the scheduling.
    std::atomic<std::int64_t> next{0};
    detail::parallel_rows(threads, threads, [&](std::int64_t, std::int64_t) {
        for (std::int64_t k = next++; k < n_items; k = next++) {
            const Item& it = items[static_cast<std::size_t>(k)];
            steps[it.block](it.r0, it.r1);
        }
    });
}

}  // namespace deadspec
