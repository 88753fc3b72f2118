// SPDX-License-Identifier: Apache-2.0
// The split form's passes over row ranges of a block, and its per-unit step: one arithmetic for
// the per-block passes (ddc_split.cpp) and the bound plan (ddc_split_plan.cpp), which must give
// the same bits (ddc_split_rows.cpp, ddc_split_apply.cpp).
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

#include "ddc_kernels.hpp"

namespace deadspec::detail {

/// How a block's tangential input and update lose their radial part: not at all, along each
/// x̃ row (a producer: v − a_i·x̃), or along each P x̃ column (a consumer: (v − b_j·P x̃)·n_j).
enum SplitMode : int { kSplitPlain = 0, kSplitRow = 1, kSplitCol = 2 };

using Segments = std::vector<std::pair<std::int64_t, std::int64_t>>;

/// One block of the split form as the row passes read it: x, m, v contiguous rows×cols (a 1-D
/// block is a column, h×1), g with strides, σ's factors and the per-unit vectors as pointers
/// (null: absent). x is read as x·decay (the decoupled weight decay folded into the passes).
template <typename T>
struct SplitRef {
    T* x = nullptr;
    T* m = nullptr;
    T* v = nullptr;
    const T* g = nullptr;
    std::int64_t gs0 = 1, gs1 = 1;  // g's strides (rows, columns)
    std::int64_t rows = 0, cols = 1;
    bool two_d = false;
    T decay = T(1);
    const T* rs = nullptr;   // σ's row factor (null: 1)
    const T* cs = nullptr;   // σ's column factor (null: 1); `ics` its reciprocals
    const T* ics = nullptr;
    const T* mu = nullptr;   // column means of x̃ a logit-shift consumer is centred by
    const T* a = nullptr;    // row coefficients (kSplitRow)
    const T* bc = nullptr;   // column coefficients and norms (kSplitCol)
    const T* nrm = nullptr;
    const T* rm = nullptr;   // apply: radial factors on rows and columns (null: 1)
    const T* cm = nullptr;
    // the update, written by pass 1 and read by pass 2 (null: pass 2 recomputes it from the
    // moments, the same bits): row i at u + (i − u0)·cols
    T* u = nullptr;
    std::int64_t u0 = 0;
    AdamScalars<T> hp{AdamStep{}};
    int axis = -1;                    // rotated heads: 0 rows, 1 columns, -1 none
    const Segments* segs = nullptr;   // the heads (with axis >= 0)

    int mode() const { return a ? kSplitRow : (bc ? kSplitCol : kSplitPlain); }
};

/// One thread's scratch rows (grown on demand, kept between passes).
template <typename T>
struct SplitScratch {
    std::vector<T> xt, gt, u, zeros, ones, gbuf, t, t2, ku;
};

/// A work item of a pass: rows [r0, r1) of a block; `segment`: a rotated head (axis 0) whose
/// second-moment input is averaged over its rows.
struct SplitItem {
    std::int64_t r0, r1;
    bool segment;
};

/// A block's work items, the same for every pass and every caller (the column sums are summed
/// per item, then over the items in order, so the bits do not depend on the threads): rows in
/// chunks of about kSplitChunk elements; a block with heads rotated along its rows has one item
/// per head and chunks between them.
constexpr std::int64_t kSplitChunk = std::int64_t(1) << 15;
std::vector<SplitItem> split_items(std::int64_t rows, std::int64_t cols, int axis,
                                   const Segments* segs);

/// Pass 0 on one item: per row Σ g̃x̃ and Σ x̃² into row_gx[i], row_xx[i] (null: not wanted), per
/// column Σ g̃·P x̃ and Σ (P x̃)² added to col_gx, col_xx (the item's partial sums; null: not
/// wanted). `gtop` (null: not wanted) gets the largest |g| bit pattern seen (gradient check).
template <typename T>
void split_sums_rows(const SplitRef<T>& b, const SplitItem& it, SplitScratch<T>& s,
                     double* row_gx, double* row_xx, double* col_gx, double* col_xx,
                     std::uint64_t* gtop);

/// Pass 1 on one item: the moments (written, checked before commit) and the update's per-row
/// Σ u·x̃ into row_u[i], per-column Σ u·P x̃ added to col_u (nulls: not wanted). Returns the
/// elements refused.
template <typename T>
std::int64_t split_moments_rows(const SplitRef<T>& b, const SplitItem& it, SplitScratch<T>& s,
                                double* row_u, double* col_u);

/// Pass 2 on one item: x ← x·r_i·c_j − σ·u, checked before commit (a refused element keeps
/// x·decay). Returns the elements refused.
template <typename T>
std::int64_t split_apply_rows(const SplitRef<T>& b, const SplitItem& it, SplitScratch<T>& s);

/// Non-finite column sums of pass 0 (`moments` false: col_gx and col_xx) or pass 1 (col_gx: the
/// update's) summed again, scaled, over every row of the block: ±inf only where the exact sum
/// exceeds float64.
template <typename T>
void split_rescue_columns(const SplitRef<T>& b, SplitScratch<T>& s, bool moments, double* col_gx,
                          double* col_xx);

/// Sums the items' partial column sums (`parts`: n_items × cols) in item order into `out`.
void split_sum_parts(const std::vector<double>& parts, std::size_t n_items, std::int64_t cols,
                     double* out);

/// One split site's per-unit step (DDCAdam form="split", steps (1)–(3)): from the site's sums
/// in the parameters' dtype — q = Σ x̃² and g_in = Σ g̃x̃ over its producer rows, n2 = Σ (P x̃)²
/// and g_only = Σ g̃·P x̃ over its column-split consumers, g_out = Σ g̃·P x̃ over all its
/// consumers — the live units, the radial coefficients of g̃, and a step of the radial scalar
/// Adam on g_U = (g_in + g_out)/√2 (checked before commit: a unit whose new moments are not
/// finite keeps them). Returns the units refused.
template <typename T>
struct SplitUnits {
    const T *q, *g_in, *n2, *g_out, *g_only;  // in: h each
    const char* gauged;                       // in: per unit, in the gauge (null: all)
    T *m, *v;                                 // the radial Adam's moments, in/out
    // out: live (1/0), q (1 where dead), n2 (0 where not split), n2 (1 where 0), the radial
    // direction per unit (−m̂/(√v̂ + ε)/√2, 0 where dead), a_i of g̃, b_j of g̃, n_j
    T *live, *qs, *n2m, *n2s, *radial, *grad_row, *grad_col, *col_norm;
};
template <typename T>
std::int64_t split_units(const SplitUnits<T>& u, std::int64_t h, std::int64_t step, double beta1,
                         double beta2, double eps);

}  // namespace deadspec::detail
