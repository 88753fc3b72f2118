// SPDX-License-Identifier: Apache-2.0
// The fused DDCAdam block step: one pass reading x, g, σ, m, v and writing x, m, v.
#include "deadspec/ddc.hpp"

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "detail.hpp"

namespace deadspec {

namespace {

constexpr const char* kFn = "deadspec.ddc_adam_update";

void check_same_layout(const TensorView& ref, const TensorView& v, const char* arg,
                       bool writable, const char* fn = kFn) {
    detail::check_cpu_float(v, fn, arg);
    DEADSPEC_CHECK_ARG(v.shape == ref.shape, fn, ": ", arg, " must have the shape of param ",
                       ref.shape_string(), ", got ", v.shape_string());
    DEADSPEC_CHECK_ARG(v.dtype == ref.dtype, fn, ": ", arg, " must have param's dtype ",
                       dtype_name(ref.dtype), ", got ", dtype_name(v.dtype));
    if (writable) {
        // (an empty tensor is never written, whatever strides its producer gave it)
        DEADSPEC_CHECK_ARG(v.numel() == 0 || v.is_contiguous(), fn, ": ", arg,
                           " must be C-contiguous");
        DEADSPEC_CHECK_ARG(!v.read_only, fn, ": ", arg, " must be writable, got a read-only tensor");
        DEADSPEC_CHECK_ARG(v.data != nullptr || v.numel() == 0, fn, ": ", arg,
                           " has a null data pointer");
    }
}

// One row of the step (the rows of a block are independent). `sig` is σ along the row (null
// for σ = 1); `g` is contiguous. A plain loop the compiler vectorises for the target it is
// inlined into (below: the baseline ISA and, chosen at run time, AVX2). This file is built with
// -fno-math-errno (so sqrt vectorises) and -ffp-contract=off (no fused multiply-adds): both
// versions round every operation alike and give bit-identical results.
#if defined(__GNUC__) || defined(__clang__)
#define DEADSPEC_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DEADSPEC_ALWAYS_INLINE inline
#endif

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

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DEADSPEC_DDC_AVX2 1
template <typename T>
__attribute__((target("avx2"))) void step_row_avx2(T* xi, T* mi, T* vi, const T* gi,
                                                   const T* sig, std::int64_t cols, T decay,
                                                   T b1, T b2, T inv_bc2_sqrt, T step_size,
                                                   T eps) {
    step_row_loop<T>(xi, mi, vi, gi, sig, cols, decay, b1, b2, inv_bc2_sqrt, step_size, eps);
}

// DEADSPEC_DDC_ISA=baseline forces the baseline loop (to check the two agree, or to rule the
// AVX2 path out); read once.
bool has_avx2() {
    static const bool yes = [] {
        const char* isa = std::getenv("DEADSPEC_DDC_ISA");
        if (isa != nullptr && std::string(isa) == "baseline") return false;
        return __builtin_cpu_supports("avx2") != 0;
    }();
    return yes;
}
#endif

template <typename T>
void step_row(T* xi, T* mi, T* vi, const T* gi, const T* sig, std::int64_t cols, T decay, T b1,
              T b2, T inv_bc2_sqrt, T step_size, T eps) {
#ifdef DEADSPEC_DDC_AVX2
    if (has_avx2()) {
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
    if (has_avx2()) {
        step_row_g2_avx2<T>(xi, mi, vi, gt, g2, sig, cols, decay, b1, b2, inv_bc2_sqrt, step_size,
                            eps);
        return;
    }
#endif
    step_row_g2_base<T>(xi, mi, vi, gt, g2, sig, cols, decay, b1, b2, inv_bc2_sqrt, step_size, eps);
}

// Work above this many elements is split over threads. These kernels are bound by memory
// bandwidth, and a thread started while torch's OpenMP workers still spin after a parallel op
// (a backward pass, say) waits for a core: measured on 2 cores, a 1024×256 row-norm pass took
// 0.22 ms on one thread and ~1–2 ms on two. Below ~2 M elements one thread is faster.
constexpr std::int64_t kParallelElements = std::int64_t(1) << 21;

template <typename T>
T element(const TensorView& s, std::int64_t off) {
    return s.dtype == DType::Float64 ? static_cast<T>(static_cast<const double*>(s.data)[off])
                                     : static_cast<T>(static_cast<const float*>(s.data)[off]);
}

// The scalars of one bias-corrected Adam step: bias corrections in float64, the per-element
// arithmetic in the parameter's dtype (as torch's Adam does).
template <typename T>
struct AdamScalars {
    explicit AdamScalars(const AdamStep& hp)
        : b1(static_cast<T>(hp.beta1)), b2(static_cast<T>(hp.beta2)),
          inv_bc2_sqrt(static_cast<T>(
              1.0 / std::sqrt(1.0 - std::pow(hp.beta2, static_cast<double>(hp.step))))),
          step_size(static_cast<T>(hp.lr /
                                   (1.0 - std::pow(hp.beta1, static_cast<double>(hp.step))))),
          eps(static_cast<T>(hp.eps)), decay(static_cast<T>(hp.decay)) {}
    T b1, b2, inv_bc2_sqrt, step_size, eps, decay;
};

// Row i of a gradient with strides (s0, s1), contiguous: the row itself when s1 = 1, else
// gathered into `buf`.
template <typename T>
const T* gather_row(const T* g, std::int64_t i, std::int64_t s0, std::int64_t s1,
                    std::int64_t cols, std::vector<T>& buf) {
    const T* gi = g + i * s0;
    if (s1 == 1) return gi;
    buf.resize(static_cast<std::size_t>(cols));
    for (std::int64_t j = 0; j < cols; ++j) buf[static_cast<std::size_t>(j)] = gi[j * s1];
    return buf.data();
}

// Each [a, e) segment of `row` replaced by its mean (a rotated head's shared second moment).
template <typename T>
void mean_within_segments(T* row, const std::vector<std::pair<std::int64_t, std::int64_t>>& segs) {
    for (const auto& [a, e] : segs) {
        T sum = T(0);
        for (std::int64_t j = a; j < e; ++j) sum += row[j];
        const T mean = sum / static_cast<T>(e - a);
        for (std::int64_t j = a; j < e; ++j) row[j] = mean;
    }
}

// One block, prepared for stepping any range of its rows (from any thread): typed pointers,
// σ's structure, the column scales and the scalar hyper-parameters resolved once.
template <typename T>
class BlockStep {
public:
    BlockStep(const AdamBlock& b) : k_(b.hp) {
        const TensorView& param = b.param;
        const TensorView& grad = b.grad;
        x_ = static_cast<T*>(const_cast<void*>(param.data));
        m_ = static_cast<T*>(const_cast<void*>(b.exp_avg.data));
        v_ = static_cast<T*>(const_cast<void*>(b.exp_avg_sq.data));
        g_ = static_cast<const T*>(grad.data);
        scale_ = b.scale;
        // A 1-D block is one row, σ along it the (1-D) scale.
        const bool two_d = param.ndim() == 2;
        rows_ = two_d ? param.shape[0] : 1;
        cols_ = two_d ? param.shape[1] : param.shape[0];
        gs0_ = two_d ? grad.stride(0) : 0;
        gs1_ = two_d ? grad.stride(1) : grad.stride(0);
        has_scale_ = b.scale.data != nullptr;
        ss0_ = has_scale_ && two_d ? b.scale.stride(0) : 0;
        ss1_ = has_scale_ ? (two_d ? b.scale.stride(1) : b.scale.stride(0)) : 0;
        col_.resize(b.col_scale.data ? static_cast<std::size_t>(cols_) : 0);
        for (std::size_t j = 0; j < col_.size(); ++j)
            col_[j] = element<T>(b.col_scale, static_cast<std::int64_t>(j) * b.col_scale.stride(0));
        // a 1-D block is one row: its rotated elements are that row's columns
        rot_axis_ = param.ndim() == 1 && b.rot_axis == 0 ? 1 : b.rot_axis;
        segs_ = b.rot_segments;
    }

    std::int64_t rows() const { return rows_; }
    /// A block with rotated head segments is stepped as one work item (its row-segment means
    /// need whole segments).
    bool rotated() const { return rot_axis_ >= 0 && !segs_.empty(); }
    std::int64_t cols() const { return cols_; }

    void operator()(std::int64_t r0, std::int64_t r1) const {
        if (rotated()) {
            rotated_rows();
            return;
        }
        const auto n = static_cast<std::size_t>(cols_);
        std::vector<T> sig(has_sigma() ? n : 0), gbuf(gs1_ == 1 ? 0 : n);
        for (std::int64_t i = r0; i < r1; ++i) {
            const T* gi = grad_row(i, gbuf);
            const T* si = sigma_row(i, sig);
            step_row<T>(x_ + i * cols_, m_ + i * cols_, v_ + i * cols_, gi, si, cols_, k_.decay,
                        k_.b1, k_.b2, k_.inv_bc2_sqrt, k_.step_size, k_.eps);
        }
    }

private:
    bool has_sigma() const { return has_scale_ || !col_.empty(); }

    // Row i of the gradient, contiguous (gathered into `buf` when strided).
    const T* grad_row(std::int64_t i, std::vector<T>& buf) const {
        return gather_row(g_, i, gs0_, gs1_, cols_, buf);
    }

    // σ along row i in `sig` (null for σ = 1).
    const T* sigma_row(std::int64_t i, std::vector<T>& sig) const {
        if (!has_sigma()) return nullptr;
        sig.resize(static_cast<std::size_t>(cols_));
        if (has_scale_) {
            if (ss1_ == 0) {  // σ constant along the row
                std::fill(sig.begin(), sig.end(), element<T>(scale_, i * ss0_));
            } else {
                for (std::size_t j = 0; j < sig.size(); ++j)
                    sig[j] = element<T>(scale_, i * ss0_ + static_cast<std::int64_t>(j) * ss1_);
            }
            for (std::size_t j = 0; j < col_.size(); ++j) sig[j] *= col_[j];
        } else {
            std::copy(col_.begin(), col_.end(), sig.begin());
        }
        return sig.data();
    }

    // The head-rotation variant: within each rotated segment (rows for axis 0, columns for
    // axis 1) the second-moment input g̃² is replaced by its mean over the segment, so v is
    // invariant under a rotation of the segment and m/(√v + ε) rotates with the gradient.
    void rotated_rows() const {
        const auto n = static_cast<std::size_t>(cols_);
        std::vector<T> gbuf, sig, gt(n), g2(n);
        auto scaled = [&](std::int64_t i, T* out_gt, const T** out_sig, std::vector<T>& sbuf) {
            const T* gi = grad_row(i, gbuf);
            const T* si = sigma_row(i, sbuf);
            for (std::size_t j = 0; j < n; ++j) out_gt[j] = si ? gi[j] * si[j] : gi[j];
            *out_sig = si;
        };
        if (rot_axis_ == 1) {
            for (std::int64_t i = 0; i < rows_; ++i) {
                const T* si = nullptr;
                scaled(i, gt.data(), &si, sig);
                for (std::size_t j = 0; j < n; ++j) g2[j] = gt[j] * gt[j];
                mean_within_segments(g2.data(), segs_);
                step_row_g2<T>(x_ + i * cols_, m_ + i * cols_, v_ + i * cols_, gt.data(),
                               g2.data(), si, cols_, k_.decay, k_.b1, k_.b2, k_.inv_bc2_sqrt,
                               k_.step_size, k_.eps);
            }
            return;
        }
        std::vector<char> in_seg(static_cast<std::size_t>(rows_), 0);
        for (const auto& [a, b] : segs_)
            for (std::int64_t i = a; i < b; ++i) in_seg[static_cast<std::size_t>(i)] = 1;
        for (std::int64_t i = 0; i < rows_; ++i)
            if (!in_seg[static_cast<std::size_t>(i)]) (*this).plain_row(i, gbuf, sig);
        for (const auto& [a, b] : segs_) {
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
                step_row_g2<T>(x_ + i * cols_, m_ + i * cols_, v_ + i * cols_, gts.data() + r * n,
                               g2.data(), sigs.empty() ? nullptr : sigs.data() + r * n, cols_,
                               k_.decay, k_.b1, k_.b2, k_.inv_bc2_sqrt, k_.step_size, k_.eps);
            }
        }
    }

    void plain_row(std::int64_t i, std::vector<T>& gbuf, std::vector<T>& sig) const {
        const T* gi = grad_row(i, gbuf);
        const T* si = sigma_row(i, sig);
        step_row<T>(x_ + i * cols_, m_ + i * cols_, v_ + i * cols_, gi, si, cols_, k_.decay, k_.b1,
                    k_.b2, k_.inv_bc2_sqrt, k_.step_size, k_.eps);
    }

    T *x_ = nullptr, *m_ = nullptr, *v_ = nullptr;
    const T* g_ = nullptr;
    TensorView scale_;
    std::int64_t rows_ = 0, cols_ = 0, gs0_ = 0, gs1_ = 0, ss0_ = 0, ss1_ = 0;
    bool has_scale_ = false;
    std::vector<T> col_;
    AdamScalars<T> k_;
    int rot_axis_ = -1;
    std::vector<std::pair<std::int64_t, std::int64_t>> segs_;
};

void check_block(const AdamBlock& b, const char* fn = kFn) {
    const TensorView& param = b.param;
    detail::check_cpu_float(param, fn, "param");
    DEADSPEC_CHECK_ARG(param.ndim() == 1 || param.ndim() == 2, fn,
                       ": param must be 1-D or 2-D, got shape ", param.shape_string());
    check_same_layout(param, param, "param", true, fn);
    check_same_layout(param, b.grad, "grad", false, fn);
    check_same_layout(param, b.exp_avg, "exp_avg", true, fn);
    check_same_layout(param, b.exp_avg_sq, "exp_avg_sq", true, fn);
    if (b.scale.data != nullptr) {
        detail::check_cpu_float(b.scale, fn, "scale");
        DEADSPEC_CHECK_ARG(b.scale.shape == param.shape, fn,
                           ": scale must be broadcast to param's shape ", param.shape_string(),
                           ", got ", b.scale.shape_string());
    }
    if (b.col_scale.data != nullptr) {
        detail::check_cpu_float(b.col_scale, fn, "col_scale");
        DEADSPEC_CHECK_ARG(param.ndim() == 2 && b.col_scale.ndim() == 1 &&
                               b.col_scale.shape[0] == param.shape[1],
                           fn, ": col_scale must be a vector with one entry per column of a 2-D "
                           "param, got ", b.col_scale.shape_string(), " for param ",
                           param.shape_string());
    }
    if (b.rot_axis >= 0 || !b.rot_segments.empty()) {
        DEADSPEC_CHECK_ARG(b.rot_axis == 0 || (b.rot_axis == 1 && param.ndim() == 2), fn,
                           ": rot_axis must be 0, or 1 for a 2-D param, got ", b.rot_axis);
        const std::int64_t len = param.ndim() == 2 ? param.shape[static_cast<std::size_t>(b.rot_axis)]
                                                   : param.shape[0];
        std::int64_t at = 0;
        for (const auto& [a, e] : b.rot_segments) {
            DEADSPEC_CHECK_ARG(a >= at && e > a && e <= len, fn,
                               ": rot_segments must be ascending, disjoint, non-empty ranges "
                               "within [0, ", len, "), got [", a, ", ", e, ")");
            at = e;
        }
        if (param.ndim() == 1) {
            DEADSPEC_CHECK_ARG(b.scale.data == nullptr, fn,
                               ": a rotated 1-D param must have σ = 1 (no scale)");
        }
        if (b.rot_axis == 0 && param.ndim() == 2) {
            DEADSPEC_CHECK_ARG(b.scale.data == nullptr || b.scale.stride(0) == 0, fn,
                               ": σ must be constant along rotated rows (a column scale only)");
        }
        if (b.rot_axis == 1) {
            DEADSPEC_CHECK_ARG(b.col_scale.data == nullptr &&
                                   (b.scale.data == nullptr || b.scale.stride(1) == 0),
                               fn, ": σ must be constant along rotated columns (a row scale only)");
        }
    }
    const AdamStep& hp = b.hp;
    DEADSPEC_CHECK_ARG(hp.step >= 1, fn, ": step must be >= 1, got ", hp.step);
    DEADSPEC_CHECK_ARG(hp.lr >= 0.0 && std::isfinite(hp.lr), fn, ": lr must be finite and >= 0, got ", hp.lr);
    DEADSPEC_CHECK_ARG(hp.beta1 >= 0.0 && hp.beta1 < 1.0 && hp.beta2 >= 0.0 && hp.beta2 < 1.0, fn,
                       ": betas must be in [0, 1), got (", hp.beta1, ", ", hp.beta2, ")");
    // eps = 0 and a negative decay (lr·wd > 1) are accepted, as torch's AdamW accepts them.
    DEADSPEC_CHECK_ARG(hp.eps >= 0.0, fn, ": eps must be >= 0, got ", hp.eps);
    DEADSPEC_CHECK_ARG(std::isfinite(hp.decay), fn, ": decay must be finite, got ", hp.decay);
}

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
    for (const AdamBlock& b : blocks) check_block(b);
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
    const int threads = detail::worker_threads(total, kParallelElements, n_items);
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

namespace {

template <typename T>
double at2(const TensorView& v, std::int64_t i, std::int64_t j) {
    return static_cast<double>(static_cast<const T*>(v.data)[i * v.stride(0) + j * v.stride(1)]);
}

double at(const TensorView& v, std::int64_t i, std::int64_t j) {
    return v.dtype == DType::Float64 ? at2<double>(v, i, j) : at2<float>(v, i, j);
}

double at1(const TensorView& v, std::int64_t i) {
    return v.dtype == DType::Float64
               ? static_cast<const double*>(v.data)[i * v.stride(0)]
               : static_cast<double>(static_cast<const float*>(v.data)[i * v.stride(0)]);
}

// Contiguous fast paths: typed pointers and plain loops the compiler vectorises.
template <typename T>
double row_sq(const TensorView& w, std::int64_t i, std::int64_t d, const double* c) {
    // Four independent float64 partial sums: the loop pipelines (a single running sum cannot be
    // reordered without -ffast-math) and the conversion from float is vectorised.
    const T* r = static_cast<const T*>(w.data) + i * d;
    double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
    std::int64_t j = 0;
    for (; j + 4 <= d; j += 4) {
        const double a0 = static_cast<double>(r[j]) * c[j];
        const double a1 = static_cast<double>(r[j + 1]) * c[j + 1];
        const double a2 = static_cast<double>(r[j + 2]) * c[j + 2];
        const double a3 = static_cast<double>(r[j + 3]) * c[j + 3];
        s0 += a0 * a0;
        s1 += a1 * a1;
        s2 += a2 * a2;
        s3 += a3 * a3;
    }
    for (; j < d; ++j) {
        const double a = static_cast<double>(r[j]) * c[j];
        s0 += a * a;
    }
    return (s0 + s1) + (s2 + s3);
}

template <typename T>
void row_dots(const TensorView& x, const TensorView& g, std::int64_t i, std::int64_t d,
              double& s, double& a) {
    using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
    const Eigen::Map<const Vec> px(static_cast<const T*>(x.data) + i * d, d);
    const Eigen::Map<const Vec> pg(static_cast<const T*>(g.data) + i * d, d);
    const auto p = (px.template cast<double>().array() * pg.template cast<double>().array()).eval();
    s = p.sum();
    a = p.abs().sum();
}

template <typename T>
void col_dots(const TensorView& x, const TensorView& g, std::int64_t i, std::int64_t d,
              double* s, double* a) {
    const T* px = static_cast<const T*>(x.data) + i * d;
    const T* pg = static_cast<const T*>(g.data) + i * d;
    for (std::int64_t j = 0; j < d; ++j) {
        const double p = static_cast<double>(px[j]) * static_cast<double>(pg[j]);
        s[j] += p;
        a[j] += std::abs(p);
    }
}

void check_vector(const TensorView& v, std::int64_t n, const char* fn, const char* arg) {
    detail::check_cpu_float(v, fn, arg);
    DEADSPEC_CHECK_ARG(v.ndim() == 1 && v.shape[0] == n, fn, ": ", arg, " must have shape (", n,
                       ",), got ", v.shape_string());
}

}  // namespace

Eigen::VectorXd ddc_row_norms(const TensorView& weight, const TensorView& col_scale,
                              const TensorView& bias, double weight_factor, double bias_factor) {
    constexpr const char* fn = "deadspec.ddc_row_norms";
    detail::check_cpu_float(weight, fn, "weight");
    DEADSPEC_CHECK_ARG(weight.ndim() == 2, fn, ": weight must be 2-D, got shape ",
                       weight.shape_string());
    const std::int64_t h = weight.shape[0], d = weight.shape[1];
    if (col_scale.data) check_vector(col_scale, d, fn, "col_scale");
    if (bias.data) check_vector(bias, h, fn, "bias");
    DEADSPEC_CHECK_ARG(std::isfinite(weight_factor) && std::isfinite(bias_factor), fn,
                       ": weight_factor and bias_factor must be finite, got ", weight_factor,
                       " and ", bias_factor);
    const double fw2 = weight_factor * weight_factor, fb2 = bias_factor * bias_factor;
    Eigen::VectorXd c = Eigen::VectorXd::Ones(d);
    if (col_scale.data)
        for (std::int64_t j = 0; j < d; ++j) c[j] = at1(col_scale, j);
    Eigen::VectorXd out(h);
    detail::parallel_rows(h, detail::worker_threads(h * d, kParallelElements, h),
                          [&](std::int64_t r0, std::int64_t r1) {
                              for (std::int64_t i = r0; i < r1; ++i) {
                                  double sq = 0.0;
                                  if (weight.is_contiguous())
                                      sq = weight.dtype == DType::Float64
                                               ? row_sq<double>(weight, i, d, c.data())
                                               : row_sq<float>(weight, i, d, c.data());
                                  else
                                      for (std::int64_t j = 0; j < d; ++j) {
                                          const double w = at(weight, i, j) * c[j];
                                          sq += w * w;
                                      }
                                  sq *= fw2;
                                  if (bias.data) {
                                      const double b = at1(bias, i);
                                      sq += fb2 * (b * b);
                                  }
                                  out[i] = std::sqrt(sq);
                              }
                          });
    return out;
}

std::pair<Eigen::VectorXd, Eigen::VectorXd> ddc_gauge_dots(const TensorView& x,
                                                           const TensorView& g, int axis) {
    constexpr const char* fn = "deadspec.ddc_gauge_dots";
    detail::check_cpu_float(x, fn, "x");
    detail::check_cpu_float(g, fn, "g");
    DEADSPEC_CHECK_ARG(x.ndim() == 2, fn, ": x must be 2-D, got shape ", x.shape_string());
    DEADSPEC_CHECK_ARG(g.shape == x.shape, fn, ": g must have the shape of x ", x.shape_string(),
                       ", got ", g.shape_string());
    DEADSPEC_CHECK_ARG(axis == 0 || axis == 1, fn, ": axis must be 0 or 1, got ", axis);
    const std::int64_t h = x.shape[0], d = x.shape[1];
    const bool fast = x.is_contiguous() && g.is_contiguous() && x.dtype == g.dtype;
    if (axis == 1) {
        Eigen::VectorXd s = Eigen::VectorXd::Zero(h), a = Eigen::VectorXd::Zero(h);
        detail::parallel_rows(h, detail::worker_threads(h * d, kParallelElements, h),
                              [&](std::int64_t r0, std::int64_t r1) {
                                  for (std::int64_t i = r0; i < r1; ++i) {
                                      if (fast) {
                                          if (x.dtype == DType::Float64)
                                              row_dots<double>(x, g, i, d, s[i], a[i]);
                                          else
                                              row_dots<float>(x, g, i, d, s[i], a[i]);
                                          continue;
                                      }
                                      double si = 0.0, ai = 0.0;
                                      for (std::int64_t j = 0; j < d; ++j) {
                                          const double p = at(x, i, j) * at(g, i, j);
                                          si += p;
                                          ai += std::abs(p);
                                      }
                                      s[i] = si;
                                      a[i] = ai;
                                  }
                              });
        return {s, a};
    }
    // Column sums: each thread owns a range of rows and its own partial sums (summed after, in
    // thread order, so the result does not depend on scheduling).
    const int threads = detail::worker_threads(h * d, kParallelElements, h);
    std::vector<Eigen::VectorXd> ps(static_cast<std::size_t>(threads), Eigen::VectorXd::Zero(d));
    std::vector<Eigen::VectorXd> pa(ps);
    const std::int64_t chunk = (h + threads - 1) / threads;
    detail::parallel_rows(h, threads, [&](std::int64_t r0, std::int64_t r1) {
        const auto t = static_cast<std::size_t>(r0 / std::max<std::int64_t>(chunk, 1));
        for (std::int64_t i = r0; i < r1; ++i) {
            if (fast) {
                if (x.dtype == DType::Float64)
                    col_dots<double>(x, g, i, d, ps[t].data(), pa[t].data());
                else
                    col_dots<float>(x, g, i, d, ps[t].data(), pa[t].data());
                continue;
            }
            for (std::int64_t j = 0; j < d; ++j) {
                const double p = at(x, i, j) * at(g, i, j);
                ps[t][j] += p;
                pa[t][j] += std::abs(p);
            }
        }
    });
    Eigen::VectorXd s = Eigen::VectorXd::Zero(d), a = Eigen::VectorXd::Zero(d);
    for (std::size_t t = 0; t < ps.size(); ++t) {
        s += ps[t];
        a += pa[t];
    }
    return {s, a};
}

}  // namespace deadspec

// --------------------------------------------------------------------------------------------
// The split form (DDCAdam form="split"): three passes over each block, the per-unit
// coefficients combined by the caller in between.
// --------------------------------------------------------------------------------------------

namespace deadspec {

namespace {

constexpr const char* kSplitFn = "deadspec.ddc_split";

void check_split_block(const SplitBlock& b) {
    // param, grad, moments, hyper-parameters and rotation segments as a fused DDCAdam block
    AdamBlock a;
    a.param = b.param;
    a.grad = b.grad;
    a.exp_avg = b.exp_avg;
    a.exp_avg_sq = b.exp_avg_sq;
    a.hp = b.hp;
    a.rot_axis = b.rot_axis;
    a.rot_segments = b.rot_segments;
    check_block(a, kSplitFn);
    const TensorView& p = b.param;
    const std::int64_t h = p.shape[0];
    const bool two_d = p.ndim() == 2;
    for (const auto& [v, arg] : {std::pair{&b.row_scale, "row_scale"},
                                 std::pair{&b.row_coef, "row_coef"},
                                 std::pair{&b.row_mult, "row_mult"}})
        if (v->data) check_vector(*v, h, kSplitFn, arg);
    for (const auto& [v, arg] :
         {std::pair{&b.col_scale, "col_scale"}, std::pair{&b.col_mean, "col_mean"},
          std::pair{&b.col_coef, "col_coef"}, std::pair{&b.col_norm, "col_norm"},
          std::pair{&b.col_mult, "col_mult"}}) {
        if (!v->data) continue;
        DEADSPEC_CHECK_ARG(two_d, kSplitFn, ": ", arg, " needs a 2-D param, got shape ",
                           p.shape_string());
        check_vector(*v, p.shape[1], kSplitFn, arg);
    }
    DEADSPEC_CHECK_ARG(!(b.row_coef.data && b.col_coef.data), kSplitFn,
                       ": a block is split along its rows or its columns, not both");
    DEADSPEC_CHECK_ARG(!b.col_coef.data || b.col_norm.data, kSplitFn,
                       ": col_coef needs col_norm");
    DEADSPEC_CHECK_ARG(!(b.col_mean.data && b.row_mult.data), kSplitFn,
                       ": a centred (col_mean) block takes no row_mult");
    const int axis = !two_d && b.rot_axis == 0 ? 0 : b.rot_axis;
    if (axis == 0 && !b.rot_segments.empty())
        DEADSPEC_CHECK_ARG(!b.row_scale.data, kSplitFn,
                           ": σ must be constant along rotated rows (no row_scale)");
    if (axis == 1 && !b.rot_segments.empty())
        DEADSPEC_CHECK_ARG(!b.col_scale.data, kSplitFn,
                           ": σ must be constant along rotated columns (no col_scale)");
}

template <typename T>
std::vector<T> read_vector(const TensorView& v) {
    std::vector<T> out(v.data ? static_cast<std::size_t>(v.shape[0]) : 0);
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = element<T>(v, static_cast<std::int64_t>(i) * v.stride(0));
    return out;
}

// Row kernels of the split passes for 2-D blocks without rotated heads: plain loops over one
// row, vectorised for the ISA of the wrapper they are inlined into (baseline, or AVX2 chosen at
// run time, as the fused DDCAdam step). x̃ = x·(1/σ), g̃ = g·σ with σ and 1/σ given per row.
// The centring `mu` is a row of zeros for a block without one (x̃ − 0 is x̃ exactly).
enum SplitMode : int { kSplitPlain = 0, kSplitRow = 1, kSplitCol = 2 };

// (the quotient is formed unconditionally and then selected, so the loops stay branch-free and
// vectorise; 0/0 where the denominator is 0 is discarded)
template <typename T>
DEADSPEC_ALWAYS_INLINE T split_update(T mk, T vk, T ibc, T ss, T eps) {
    const T den = std::sqrt(vk) * ibc + eps;
    const T q = mk / den;
    return (den > T(0) ? q : T(0)) * ss;
}

// v minus its radial part along the block: a_i·x̃ along a row (kSplitRow), b_j·P x̃ along a
// column times the column norm n_j (kSplitCol), nothing (kSplitPlain). `b`, `nrm` are read only
// for kSplitCol. The tangential input (v = g̃) and the re-projected update (v = u) alike.
template <typename T, int Mode>
DEADSPEC_ALWAYS_INLINE T split_project(T v, T xj, T a, const T* __restrict b,
                                       const T* __restrict nrm, const T* __restrict mu,
                                       std::int64_t j) {
    if constexpr (Mode == kSplitRow) return v - a * xj;
    if constexpr (Mode == kSplitCol) return (v - b[j] * (xj - mu[j])) * nrm[j];
    return v;
}

template <typename T>
DEADSPEC_ALWAYS_INLINE void split_sums_loop(const T* __restrict x, const T* __restrict g,
                                            const T* __restrict sig, const T* __restrict isig,
                                            const T* __restrict mu, T* __restrict xt,
                                            T* __restrict gt, double* __restrict cgx,
                                            double* __restrict cxx, std::int64_t n) {
    for (std::int64_t j = 0; j < n; ++j) {
        xt[j] = x[j] * isig[j];
        gt[j] = g[j] * sig[j];
    }
    for (std::int64_t j = 0; j < n; ++j) {
        const double pc = static_cast<double>(xt[j] - mu[j]);
        cgx[j] += static_cast<double>(gt[j]) * pc;
        cxx[j] += pc * pc;
    }
}

template <typename T, int Mode>
DEADSPEC_ALWAYS_INLINE void split_moments_loop(
    const T* __restrict x, const T* __restrict g, T* __restrict m, T* __restrict v,
    const T* __restrict sig, const T* __restrict isig, T a, const T* __restrict b,
    const T* __restrict nrm, const T* __restrict mu, T* __restrict u, T* __restrict xt,
    double* __restrict cu, std::int64_t n, T b1, T b2, T ibc, T ss, T eps) {
    const T one = T(1);
    for (std::int64_t j = 0; j < n; ++j) {
        const T xj = x[j] * isig[j];
        const T t = split_project<T, Mode>(g[j] * sig[j], xj, a, b, nrm, mu, j);
        const T mk = b1 * m[j] + (one - b1) * t;
        const T vk = b2 * v[j] + (one - b2) * (t * t);
        m[j] = mk;
        v[j] = vk;
        u[j] = split_update(mk, vk, ibc, ss, eps);
        xt[j] = xj;
    }
    for (std::int64_t j = 0; j < n; ++j)
        cu[j] += static_cast<double>(u[j]) * static_cast<double>(xt[j] - mu[j]);
}

// The moments step in two halves, for rotated head blocks whose second-moment input t² is
// averaged over each head segment in between: the tangential input (t, t²), then the moments
// and the update from given (t, t²).
template <typename T, int Mode>
DEADSPEC_ALWAYS_INLINE void split_tangent_loop(const T* __restrict x, const T* __restrict g,
                                               const T* __restrict sig,
                                               const T* __restrict isig, T a,
                                               const T* __restrict b, const T* __restrict nrm,
                                               const T* __restrict mu, T* __restrict t,
                                               T* __restrict t2, std::int64_t n) {
    for (std::int64_t j = 0; j < n; ++j) {
        const T tj = split_project<T, Mode>(g[j] * sig[j], x[j] * isig[j], a, b, nrm, mu, j);
        t[j] = tj;
        t2[j] = tj * tj;
    }
}

template <typename T>
DEADSPEC_ALWAYS_INLINE void split_moments_t2_loop(
    const T* __restrict x, const T* __restrict isig, const T* __restrict mu,
    const T* __restrict t, const T* __restrict t2, T* __restrict m, T* __restrict v,
    T* __restrict u, T* __restrict xt, double* __restrict cu, std::int64_t n, T b1, T b2, T ibc,
    T ss, T eps) {
    const T one = T(1);
    for (std::int64_t j = 0; j < n; ++j) {
        const T mk = b1 * m[j] + (one - b1) * t[j];
        const T vk = b2 * v[j] + (one - b2) * t2[j];
        m[j] = mk;
        v[j] = vk;
        u[j] = split_update(mk, vk, ibc, ss, eps);
        xt[j] = x[j] * isig[j];
    }
    for (std::int64_t j = 0; j < n; ++j)
        cu[j] += static_cast<double>(u[j]) * static_cast<double>(xt[j] - mu[j]);
}

// Cm: 0 no column factor, 1 x·c_j, 2 only the centred part scaled (x + (c_j − 1)·σ·P x̃).
template <typename T, int Mode, int Cm>
DEADSPEC_ALWAYS_INLINE void split_apply_loop(
    T* __restrict x, const T* __restrict m, const T* __restrict v, const T* __restrict sig,
    const T* __restrict isig, T a, const T* __restrict b, const T* __restrict nrm,
    const T* __restrict mu, T r, const T* __restrict c, std::int64_t n, T ibc, T ss, T eps) {
    for (std::int64_t j = 0; j < n; ++j) {
        const T xj = x[j];
        const T xtj = xj * isig[j];
        const T u = split_project<T, Mode>(split_update(m[j], v[j], ibc, ss, eps), xtj, a, b, nrm,
                                           mu, j);
        T xn = xj * r;
        if constexpr (Cm == 1) xn = xn * c[j];
        if constexpr (Cm == 2) xn = xn + (c[j] - T(1)) * (sig[j] * (xtj - mu[j]));
        x[j] = xn - sig[j] * u;
    }
}

template <typename T>
using SplitSumsFn = void (*)(const T*, const T*, const T*, const T*, const T*, T*, T*, double*,
                             double*, std::int64_t);
template <typename T>
using SplitMomentsFn = void (*)(const T*, const T*, T*, T*, const T*, const T*, T, const T*,
                                const T*, const T*, T*, T*, double*, std::int64_t, T, T, T, T,
                                T);
template <typename T>
using SplitApplyFn = void (*)(T*, const T*, const T*, const T*, const T*, T, const T*,
                              const T*, const T*, T, const T*, std::int64_t, T, T, T);

template <typename T>
void split_sums_base(const T* x, const T* g, const T* sig, const T* isig, const T* mu, T* xt,
                     T* gt, double* cgx, double* cxx, std::int64_t n) {
    split_sums_loop<T>(x, g, sig, isig, mu, xt, gt, cgx, cxx, n);
}
template <typename T, int Mode>
void split_moments_base(const T* x, const T* g, T* m, T* v, const T* sig, const T* isig, T a,
                        const T* b, const T* nrm, const T* mu, T* u, T* xt, double* cu,
                        std::int64_t n, T b1, T b2, T ibc, T ss, T eps) {
    split_moments_loop<T, Mode>(x, g, m, v, sig, isig, a, b, nrm, mu, u, xt, cu, n, b1, b2, ibc,
                                ss, eps);
}
template <typename T, int Mode, int Cm>
void split_apply_base(T* x, const T* m, const T* v, const T* sig, const T* isig, T a,
                      const T* b, const T* nrm, const T* mu, T r, const T* c, std::int64_t n,
                      T ibc, T ss, T eps) {
    split_apply_loop<T, Mode, Cm>(x, m, v, sig, isig, a, b, nrm, mu, r, c, n, ibc, ss, eps);
}

#ifdef DEADSPEC_DDC_AVX2
template <typename T>
__attribute__((target("avx2"))) void split_sums_avx2(const T* x, const T* g, const T* sig,
                                                     const T* isig, const T* mu, T* xt, T* gt,
                                                     double* cgx, double* cxx, std::int64_t n) {
    split_sums_loop<T>(x, g, sig, isig, mu, xt, gt, cgx, cxx, n);
}
template <typename T, int Mode>
__attribute__((target("avx2"))) void split_moments_avx2(
    const T* x, const T* g, T* m, T* v, const T* sig, const T* isig, T a, const T* b,
    const T* nrm, const T* mu, T* u, T* xt, double* cu, std::int64_t n, T b1, T b2, T ibc,
    T ss, T eps) {
    split_moments_loop<T, Mode>(x, g, m, v, sig, isig, a, b, nrm, mu, u, xt, cu, n, b1, b2, ibc,
                                ss, eps);
}
template <typename T, int Mode, int Cm>
__attribute__((target("avx2"))) void split_apply_avx2(T* x, const T* m, const T* v,
                                                      const T* sig, const T* isig, T a,
                                                      const T* b, const T* nrm, const T* mu,
                                                      T r, const T* c, std::int64_t n, T ibc,
                                                      T ss, T eps) {
    split_apply_loop<T, Mode, Cm>(x, m, v, sig, isig, a, b, nrm, mu, r, c, n, ibc, ss, eps);
}
#endif

template <typename T>
SplitSumsFn<T> pick_split_sums() {
#ifdef DEADSPEC_DDC_AVX2
    if (has_avx2()) return &split_sums_avx2<T>;
#endif
    return &split_sums_base<T>;
}

template <typename T, int Mode>
SplitMomentsFn<T> pick_split_moments_mode() {
#ifdef DEADSPEC_DDC_AVX2
    if (has_avx2()) return &split_moments_avx2<T, Mode>;
#endif
    return &split_moments_base<T, Mode>;
}

template <typename T>
SplitMomentsFn<T> pick_split_moments(int mode) {
    if (mode == kSplitRow) return pick_split_moments_mode<T, kSplitRow>();
    if (mode == kSplitCol) return pick_split_moments_mode<T, kSplitCol>();
    return pick_split_moments_mode<T, kSplitPlain>();
}

template <typename T, int Mode, int Cm>
SplitApplyFn<T> pick_split_apply_mc() {
#ifdef DEADSPEC_DDC_AVX2
    if (has_avx2()) return &split_apply_avx2<T, Mode, Cm>;
#endif
    return &split_apply_base<T, Mode, Cm>;
}

template <typename T, int Mode>
SplitApplyFn<T> pick_split_apply_m(int cm) {
    if (cm == 1) return pick_split_apply_mc<T, Mode, 1>();
    if (cm == 2) return pick_split_apply_mc<T, Mode, 2>();
    return pick_split_apply_mc<T, Mode, 0>();
}

template <typename T>
SplitApplyFn<T> pick_split_apply(int mode, int cm) {
    if (mode == kSplitRow) return pick_split_apply_m<T, kSplitRow>(cm);
    if (mode == kSplitCol) return pick_split_apply_m<T, kSplitCol>(cm);
    return pick_split_apply_m<T, kSplitPlain>(cm);
}

// Σ a·b in float64 with eight partial sums in a fixed order (lanes the compiler can keep in
// vector registers; a single running sum could not be reordered without -ffast-math).
template <typename T>
double dot8(const T* __restrict a, const T* __restrict b, std::int64_t n) {
    double acc[8] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    std::int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int k = 0; k < 8; ++k)
            acc[k] += static_cast<double>(a[j + k]) * static_cast<double>(b[j + k]);
    for (; j < n; ++j) acc[0] += static_cast<double>(a[j]) * static_cast<double>(b[j]);
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// One split block with its vectors read once, stepped row by row through the kernels above. A
// 1-D block is a column (h×1): each element is the row of its own unit (a producer's bias or a
// norm's γ, β).
template <typename T>
class SplitStep {
public:
    explicit SplitStep(const SplitBlock& b)
        : rs_(read_vector<T>(b.row_scale)), cs_(read_vector<T>(b.col_scale)),
          mu_(read_vector<T>(b.col_mean)), a_(read_vector<T>(b.row_coef)),
          bc_(read_vector<T>(b.col_coef)), n_(read_vector<T>(b.col_norm)),
          rm_(read_vector<T>(b.row_mult)), cm_(read_vector<T>(b.col_mult)), k_(b.hp) {
        const TensorView& p = b.param;
        x_ = static_cast<T*>(const_cast<void*>(p.data));
        m_ = static_cast<T*>(const_cast<void*>(b.exp_avg.data));
        v_ = static_cast<T*>(const_cast<void*>(b.exp_avg_sq.data));
        g_ = static_cast<const T*>(b.grad.data);
        rows_ = p.shape[0];
        two_d_ = p.ndim() == 2;
        cols_ = two_d_ ? p.shape[1] : 1;
        gs0_ = b.grad.stride(0);
        gs1_ = two_d_ ? b.grad.stride(1) : 1;
        axis_ = !two_d_ && b.rot_axis >= 0 ? 0 : b.rot_axis;  // a 1-D block's elements are rows
        segs_ = b.rot_segments;
        if (segs_.empty()) axis_ = -1;
        ics_.resize(cs_.size());
        for (std::size_t j = 0; j < cs_.size(); ++j) ics_[j] = T(1) / cs_[j];
        if (mu_.empty()) zeros_.assign(static_cast<std::size_t>(cols_), T(0));
        mode_ = !a_.empty() ? kSplitRow : (!bc_.empty() ? kSplitCol : kSplitPlain);
    }

    SplitSums sums() const {
        SplitSums s;
        s.row_gx = Eigen::VectorXd::Zero(rows_);
        s.row_xx = Eigen::VectorXd::Zero(rows_);
        s.col_gx = Eigen::VectorXd::Zero(cols_);
        s.col_xx = Eigen::VectorXd::Zero(cols_);
        const auto n = static_cast<std::size_t>(cols_);
        std::vector<T> sig(n), isig(n), xt(n), gt(n), gbuf;
        const SplitSumsFn<T> fn = pick_split_sums<T>();
        for (std::int64_t i = 0; i < rows_; ++i) {
            scales_row(i, sig.data(), isig.data());
            fn(x_ + i * cols_, grad_row(i, gbuf), sig.data(), isig.data(), mu_row(), xt.data(),
               gt.data(), s.col_gx.data(), s.col_xx.data(), cols_);
            s.row_gx[i] = dot8(gt.data(), xt.data(), cols_);
            s.row_xx[i] = dot8(xt.data(), xt.data(), cols_);
        }
        if (!two_d_) s.col_gx.resize(0), s.col_xx.resize(0);  // a 1-D block has no columns
        return s;
    }

    std::pair<Eigen::VectorXd, Eigen::VectorXd> moments() const {
        auto out = axis_ >= 0 ? rotated_moments() : plain_moments();
        if (!two_d_) out.second.resize(0);
        return out;
    }

    void apply() const {
        const auto n = static_cast<std::size_t>(cols_);
        std::vector<T> sig(n), isig(n);
        const int cm = cm_.empty() ? 0 : (mu_.empty() ? 1 : 2);
        const SplitApplyFn<T> fn = pick_split_apply<T>(mode_, cm);
        for (std::int64_t i = 0; i < rows_; ++i) {
            scales_row(i, sig.data(), isig.data());
            const T r = rm_.empty() ? T(1) : rm_[static_cast<std::size_t>(i)];
            fn(x_ + i * cols_, m_ + i * cols_, v_ + i * cols_, sig.data(), isig.data(),
               row_coef(i), bc_.data(), n_.data(), mu_row(), r, cm_.data(), cols_,
               k_.inv_bc2_sqrt, k_.step_size, k_.eps);
        }
    }

private:
    // σ and 1/σ along row i (x̃ = x·(1/σ), g̃ = g·σ).
    void scales_row(std::int64_t i, T* sig, T* isig) const {
        const T r = rs_.empty() ? T(1) : rs_[static_cast<std::size_t>(i)];
        const T ir = rs_.empty() ? T(1) : T(1) / r;
        if (cs_.empty()) {
            std::fill(sig, sig + cols_, r);
            std::fill(isig, isig + cols_, ir);
            return;
        }
        for (std::int64_t j = 0; j < cols_; ++j) {
            sig[j] = r * cs_[static_cast<std::size_t>(j)];
            isig[j] = ir * ics_[static_cast<std::size_t>(j)];
        }
    }

    const T* grad_row(std::int64_t i, std::vector<T>& buf) const {
        return gather_row(g_, i, gs0_, gs1_, cols_, buf);
    }
    const T* mu_row() const { return mu_.empty() ? zeros_.data() : mu_.data(); }
    T row_coef(std::int64_t i) const {
        return a_.empty() ? T(0) : a_[static_cast<std::size_t>(i)];
    }

    std::pair<Eigen::VectorXd, Eigen::VectorXd> plain_moments() const {
        Eigen::VectorXd ru = Eigen::VectorXd::Zero(rows_), cu = Eigen::VectorXd::Zero(cols_);
        const auto n = static_cast<std::size_t>(cols_);
        std::vector<T> sig(n), isig(n), u(n), xt(n), gbuf;
        const SplitMomentsFn<T> fn = pick_split_moments<T>(mode_);
        for (std::int64_t i = 0; i < rows_; ++i) {
            scales_row(i, sig.data(), isig.data());
            fn(x_ + i * cols_, grad_row(i, gbuf), m_ + i * cols_, v_ + i * cols_, sig.data(),
               isig.data(), row_coef(i), bc_.data(), n_.data(), mu_row(), u.data(), xt.data(),
               cu.data(), cols_, k_.b1, k_.b2, k_.inv_bc2_sqrt, k_.step_size, k_.eps);
            ru[i] = dot8(u.data(), xt.data(), cols_);
        }
        return {ru, cu};
    }

    void tangent_row(std::int64_t i, const T* sig, const T* isig, const T* gi, T* t,
                     T* t2) const {
        const T* x = x_ + i * cols_;
        const T a = row_coef(i);
        if (mode_ == kSplitRow)
            split_tangent_loop<T, kSplitRow>(x, gi, sig, isig, a, nullptr, nullptr, mu_row(), t,
                                             t2, cols_);
        else if (mode_ == kSplitCol)
            split_tangent_loop<T, kSplitCol>(x, gi, sig, isig, a, bc_.data(), n_.data(),
                                             mu_row(), t, t2, cols_);
        else
            split_tangent_loop<T, kSplitPlain>(x, gi, sig, isig, a, nullptr, nullptr, mu_row(),
                                               t, t2, cols_);
    }

    // Rotated head blocks: t² averaged over each head segment (along the row for axis 1, over
    // the segment's rows per column for axis 0) before it enters v.
    std::pair<Eigen::VectorXd, Eigen::VectorXd> rotated_moments() const {
        Eigen::VectorXd ru = Eigen::VectorXd::Zero(rows_), cu = Eigen::VectorXd::Zero(cols_);
        const auto n = static_cast<std::size_t>(cols_);
        const bool whole = axis_ == 0;
        const std::size_t kept = whole ? static_cast<std::size_t>(rows_) : 1;
        std::vector<T> sig(n), isig(n), t(kept * n), t2(kept * n), u(n), xt(n), gbuf;
        auto update = [&](std::int64_t i, const T* ti, const T* t2i) {
            scales_row(i, sig.data(), isig.data());
            split_moments_t2_loop<T>(x_ + i * cols_, isig.data(), mu_row(), ti, t2i,
                                     m_ + i * cols_, v_ + i * cols_, u.data(), xt.data(),
                                     cu.data(), cols_, k_.b1, k_.b2, k_.inv_bc2_sqrt,
                                     k_.step_size, k_.eps);
            ru[i] = dot8(u.data(), xt.data(), cols_);
        };
        if (!whole) {
            for (std::int64_t i = 0; i < rows_; ++i) {
                scales_row(i, sig.data(), isig.data());
                tangent_row(i, sig.data(), isig.data(), grad_row(i, gbuf), t.data(), t2.data());
                mean_within_segments(t2.data(), segs_);
                update(i, t.data(), t2.data());
            }
            return {ru, cu};
        }
        for (std::int64_t i = 0; i < rows_; ++i) {
            scales_row(i, sig.data(), isig.data());
            const auto off = static_cast<std::size_t>(i) * n;
            tangent_row(i, sig.data(), isig.data(), grad_row(i, gbuf), t.data() + off,
                        t2.data() + off);
        }
        for (const auto& [a, e] : segs_) {
            for (std::size_t j = 0; j < n; ++j) {
                T sum = T(0);
                for (std::int64_t i = a; i < e; ++i) sum += t2[static_cast<std::size_t>(i) * n + j];
                const T mean = sum / static_cast<T>(e - a);
                for (std::int64_t i = a; i < e; ++i) t2[static_cast<std::size_t>(i) * n + j] = mean;
            }
        }
        for (std::int64_t i = 0; i < rows_; ++i) {
            const auto off = static_cast<std::size_t>(i) * n;
            update(i, t.data() + off, t2.data() + off);
        }
        return {ru, cu};
    }

    std::vector<T> rs_, cs_, mu_, a_, bc_, n_, rm_, cm_;
    AdamScalars<T> k_;
    std::vector<T> ics_, zeros_;
    int mode_ = kSplitPlain;
    T *x_ = nullptr, *m_ = nullptr, *v_ = nullptr;
    const T* g_ = nullptr;
    std::int64_t rows_ = 0, cols_ = 0, gs0_ = 0, gs1_ = 0;
    bool two_d_ = false;
    int axis_ = -1;
    std::vector<std::pair<std::int64_t, std::int64_t>> segs_;
};

template <typename F>
auto split_each(const std::vector<SplitBlock>& blocks, F&& f) {
    for (const SplitBlock& b : blocks) check_split_block(b);
    using R = decltype(f(SplitStep<double>(blocks.front())));
    std::vector<R> out;
    out.reserve(blocks.size());
    for (const SplitBlock& b : blocks) {
        if (b.param.dtype == DType::Float64)
            out.push_back(f(SplitStep<double>(b)));
        else
            out.push_back(f(SplitStep<float>(b)));
    }
    return out;
}

}  // namespace

std::vector<SplitSums> ddc_split_sums(const std::vector<SplitBlock>& blocks) {
    if (blocks.empty()) return {};
    return split_each(blocks, [](const auto& s) { return s.sums(); });
}

std::vector<std::pair<Eigen::VectorXd, Eigen::VectorXd>> ddc_split_moments(
    const std::vector<SplitBlock>& blocks) {
    if (blocks.empty()) return {};
    return split_each(blocks, [](const auto& s) { return s.moments(); });
}

void ddc_split_apply(const std::vector<SplitBlock>& blocks) {
    if (blocks.empty()) return;
    split_each(blocks, [](const auto& s) {
        s.apply();
        return 0;
    });
}

}  // namespace deadspec
