// SPDX-License-Identifier: Apache-2.0
// Internals shared by the DDC sources (ddc_step.cpp, ddc_scales.cpp, ddc_split.cpp): the row
// kernels' inlining and run-time ISA choice, element access, the Adam scalars, row helpers.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "deadspec/ddc.hpp"
#include "deadspec/types.hpp"

// The row kernels are plain loops the compiler vectorises for the target of the wrapper they are
// inlined into: the baseline ISA and, chosen at run time, AVX2. The DDC sources are built with
// -fno-math-errno (so sqrt vectorises) and -ffp-contract=off (no fused multiply-adds; see
// cpp/CMakeLists.txt): both versions round every operation alike and give bit-identical results.
#if defined(__GNUC__) || defined(__clang__)
#define DEADSPEC_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define DEADSPEC_ALWAYS_INLINE inline
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DEADSPEC_DDC_AVX2 1
// The AVX-512 wrappers' target (512-bit vectors: GCC's generic tuning would stay at 256 bits).
#define DEADSPEC_DDC_AVX512 \
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,prefer-vector-width=512")))
#endif

namespace deadspec::detail {

template <typename T>
using Bits = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;

// The largest |x| of n contiguous values as the bit pattern of |x| (sign cleared): for IEEE
// values of one sign the integer order is the numeric order, with Inf above every finite value
// and NaN above Inf, so one integer max (which vectorises) finds both the bound and a
// non-finite entry.
template <typename T>
DEADSPEC_ALWAYS_INLINE Bits<T> absmax_loop(const T* __restrict p, std::int64_t n) {
    using U = Bits<T>;
    const U mask = ~(U(1) << (8 * sizeof(T) - 1));
    U top = 0;
    for (std::int64_t j = 0; j < n; ++j) {
        U u;
        std::memcpy(&u, p + j, sizeof(T));
        u &= mask;
        top = u > top ? u : top;
    }
    return top;
}

#ifdef DEADSPEC_DDC_AVX2
// Whether the AVX2 kernels run. DEADSPEC_DDC_ISA=baseline forces the baseline loop (to check the
// two agree, or to rule the AVX2 path out); read once.
inline bool has_avx2() {
    static const bool yes = [] {
        const char* isa = std::getenv("DEADSPEC_DDC_ISA");
        if (isa != nullptr && std::string(isa) == "baseline") return false;
        return __builtin_cpu_supports("avx2") != 0;
    }();
    return yes;
}

// Whether the AVX-512 kernels run (F, VL, BW and DQ; 512-bit vectors). DEADSPEC_DDC_ISA=avx2 (or
// baseline) rules them out. The same loops, the same roundings: bit-identical to the others.
inline bool has_avx512() {
    static const bool yes = [] {
        const char* isa = std::getenv("DEADSPEC_DDC_ISA");
        if (isa != nullptr && (std::string(isa) == "baseline" || std::string(isa) == "avx2"))
            return false;
        return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("avx512vl") != 0 &&
               __builtin_cpu_supports("avx512bw") != 0 && __builtin_cpu_supports("avx512dq") != 0;
    }();
    return yes;
}
#endif

// Work above this many elements is split over threads. These kernels are bound by memory
// bandwidth, and a thread started while torch's OpenMP workers still spin after a parallel op
// (a backward pass, say) waits for a core: measured on 2 cores, a 1024×256 row-norm pass took
// 0.22 ms on one thread and ~1–2 ms on two. Below ~2 M elements one thread is faster.
constexpr std::int64_t kParallelElements = std::int64_t(1) << 21;

// Entry `off` (in elements) of a float32/float64 view, as T.
template <typename T>
T element(const TensorView& s, std::int64_t off) {
    return s.dtype == DType::Float64 ? static_cast<T>(static_cast<const double*>(s.data)[off])
                                     : static_cast<T>(static_cast<const float*>(s.data)[off]);
}

// A 1-D view's entries in type T (empty for a null view).
template <typename T>
std::vector<T> read_vector(const TensorView& v) {
    std::vector<T> out(v.data ? static_cast<std::size_t>(v.shape[0]) : 0);
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = element<T>(v, static_cast<std::int64_t>(i) * v.stride(0));
    return out;
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

// The count type of the check before commit: an integer of T's width, so that counting refused
// elements is an integer sum the loops vectorise lane for lane (a floating-point sum would not
// vectorise without -ffast-math). Rows are stepped in chunks of at most kCommitChunk elements,
// so a 32-bit count cannot overflow.
template <typename T>
using CommitCount = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
constexpr std::int64_t kCommitChunk = std::int64_t(1) << 30;

// `ok ? a : b` as a bitwise select: the loops it sits in store unconditionally (a plain `?:` on a
// value just loaded is if-converted into masked stores, which cost more than the step itself).
template <typename T>
DEADSPEC_ALWAYS_INLINE T pick(bool ok, T a, T b) {
    using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
    U ua, ub;
    std::memcpy(&ua, &a, sizeof(T));
    std::memcpy(&ub, &b, sizeof(T));
    const U mask = U(0) - U(ok);
    const U r = (ua & mask) | (ub & ~mask);
    T out;
    std::memcpy(&out, &r, sizeof(T));
    return out;
}

// The check-before-commit of one element of the coordinate step: (x, m, v) ← (xk, mk, vk) when
// xk and vk are finite, else (Keep) the pre-step values are kept; returns 1 for a non-finite
// (refused) element, else 0. From finite x, m, v, g̃ a non-finite mk always makes xk non-finite
// (it is divided by a finite positive number and multiplied by σ·lr/bc1, an Inf·0 being NaN), so
// xk and vk decide. A value y is finite iff y − y == 0 (Inf − Inf and NaN − NaN are NaN; the DDC
// sources are built without -ffast-math, so the compiler does not fold it). A step that
// overflows nowhere is written unchanged. Keep = false writes unconditionally and only counts:
// the detector of a step the caller has screened (AdamBlock::keep), a quarter cheaper.
template <bool Keep, typename T>
DEADSPEC_ALWAYS_INLINE CommitCount<T> commit(T& x, T& m, T& v, T xk, T mk, T vk) {
    const bool ok = ((xk - xk) + (vk - vk)) == T(0);
    if constexpr (Keep) {
        x = pick(ok, xk, x);
        m = pick(ok, mk, m);
        v = pick(ok, vk, v);
    } else {
        x = xk;
        m = mk;
        v = vk;
    }
    return ok ? CommitCount<T>(0) : CommitCount<T>(1);
}

// Two values (a split step's moments): (m, v) ← (mk, vk) when both are finite (see commit).
template <typename T>
DEADSPEC_ALWAYS_INLINE CommitCount<T> commit(T& m, T& v, T mk, T vk) {
    const bool ok = ((mk - mk) + (vk - vk)) == T(0);
    m = pick(ok, mk, m);
    v = pick(ok, vk, v);
    return ok ? CommitCount<T>(0) : CommitCount<T>(1);
}

// One value: x ← xk when finite (see commit); returns 1 when refused.
template <typename T>
DEADSPEC_ALWAYS_INLINE CommitCount<T> commit(T& x, T xk) {
    const bool ok = (xk - xk) == T(0);
    x = pick(ok, xk, x);
    return ok ? CommitCount<T>(0) : CommitCount<T>(1);
}

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

class Workers;

// ddc_adam_update_many on validated blocks, over threads once the blocks hold `min_parallel`
// elements in all (ddc_step.cpp): `workers`' threads, or threads started for the call (null).
void adam_update_many(const std::vector<AdamBlock>& blocks, std::vector<std::int64_t>& refused,
                      std::int64_t min_parallel, Workers* workers = nullptr);

// Rows [r0, r1) of one validated block without rotations (2-D, or a 1-D block's one row), one
// thread, the arithmetic of adam_update_many; returns the elements refused.
std::int64_t adam_rows(const AdamBlock& b, std::int64_t r0, std::int64_t r1);

// ddc_row_norms on rows [r0, r1) of `weight` (2-D, any strides), one thread: out[i − r0] =
// √(f_w²·Σ_j (W_ij·c_j)² + f_b²·b_i²), `c` d column factors (ones for none), `b` the bias as
// float64 (empty for none); a row whose plain sum overflows is recomputed scaled (ddc_scales.cpp).
void row_norms_range(const TensorView& weight, const double* c, const std::vector<double>& b,
                     double fw, double fb, std::int64_t r0, std::int64_t r1, double* out);

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

/// A view of an owned byte buffer as a C-contiguous (or given-strides) float32/float64 tensor.
inline TensorView buffer_view(const std::vector<std::byte>& buf, DType dtype,
                              std::vector<std::int64_t> shape,
                              std::vector<std::int64_t> strides = {}) {
    TensorView v;
    v.data = buf.data();
    v.dtype = dtype;
    v.shape = std::move(shape);
    v.strides = std::move(strides);
    return v;
}

}  // namespace deadspec::detail
