// SPDX-License-Identifier: Apache-2.0
// Private pieces of the sequence Fisher-Gram (fisher_gram.cpp, fisher_workers.cpp): the (N, T, d)
// input read as float64, scratch buffers, the final symmetrisation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "deadspec/types.hpp"
#include "core.hpp"

namespace deadspec::detail {

struct ScratchFree {
    std::size_t mapped = 0;  // bytes of a direct mapping (munmap), 0 for malloc
    void operator()(double* p) const;
};
using Scratch = std::unique_ptr<double[], ScratchFree>;
/// Uninitialised float64 scratch (written before it is read), huge-page backed when large.
Scratch fisher_scratch(std::int64_t len);
/// An n×n result, huge-page backed when large; zero-filled on request.
RowMatrixXd fisher_result(std::int64_t n, bool zero);
/// What fisher_finish applies to each element of F's lower triangle before it scales and
/// mirrors: F += Σ addends (n×n, row-major), then F = (F + beta)·times when `times` is set.
struct FinishTerms {
    std::vector<const double*> addends;
    const double* times = nullptr;
    double beta = 0.0;
};
/// In place, by `workers` threads: K = scale·(F + Fᵀ) (transpose_add), or K = scale·F mirrored
/// from its lower triangle, with `terms` applied first.
void fisher_finish(RowMatrixXd& f, double scale, bool transpose_add,
                   const FinishTerms& terms = {}, int workers = 1);

/// A (N, T, d) float32/float64 CPU tensor (2-D: T = 1) read as float64. `direct()` inputs
/// (float64 with unit stride along d) are used in place: element (i, t, c) at
/// data()[i·s0 + t·s1 + c].
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
    /// + t − t0) of width c1 − c0, contiguous; split over threads when large unless `serial`.
    /// Throws (naming the first non-finite element of the whole tensor) if a value is NaN/Inf.
    void copy(std::int64_t i0, std::int64_t i1, std::int64_t t0, std::int64_t t1,
              std::int64_t c0, std::int64_t c1, double* out, bool serial = false) const {
        const std::int64_t w = c1 - c0, nt = t1 - t0;
        const std::int64_t work = (i1 - i0) * nt * w;
        const int threads =
            serial ? 1 : worker_threads(work, std::int64_t(1) << 20, i1 - i0);
        parallel_rows(i1 - i0, threads, [&](std::int64_t r0, std::int64_t r1) {
            double* o = out + r0 * nt * w;
            const bool bad =
                m_v.dtype == DType::Float64
                    ? copy_rows(static_cast<const double*>(m_v.data), i0 + r0, i0 + r1, t0, t1, c0,
                                c1, o)
                    : copy_rows(static_cast<const float*>(m_v.data), i0 + r0, i0 + r1, t0, t1, c0,
                                c1, o);
            if (bad) fail_non_finite();
        });
    }

    /// Throws unless every element is finite (for direct inputs, which are never copied).
    void check_finite() const {
        bool bad = false;
        for (std::int64_t i = 0; i < m_n && !bad; ++i)
            for (std::int64_t tt = 0; tt < m_t && !bad; ++tt)
                bad = non_finite_bits(data() + i * m_s0 + tt * m_s1, 1, m_d) != 0;
        if (bad) fail_non_finite();
    }

private:
    // Sign bit of (exponent field + one exponent unit): set exactly when the exponent is all
    // ones (±Inf, NaN). Integer and/add/or only, so the check vectorises inside the conversion
    // loop at no measurable cost (a separate x − x == 0 pass over the float64 copy cost 3× the
    // conversion itself on the reference machine).
    static std::uint32_t exp_bits(float x) {
        std::uint32_t b;
        std::memcpy(&b, &x, sizeof b);
        return (b & 0x7f800000u) + 0x00800000u;
    }
    static std::uint64_t exp_bits(double x) {
        std::uint64_t b;
        std::memcpy(&b, &x, sizeof b);
        return (b & 0x7ff0000000000000ull) + 0x0010000000000000ull;
    }
    template <typename S>
    static bool non_finite_bits(const S* src, std::int64_t stride, std::int64_t w) {
        decltype(exp_bits(S())) acc = 0;
        for (std::int64_t c = 0; c < w; ++c) acc |= exp_bits(src[c * stride]);
        return (acc >> (8 * sizeof(acc) - 1)) != 0;
    }

    // Returns true if a converted value is NaN/Inf.
    template <typename S>
    bool copy_rows(const S* base, std::int64_t i0, std::int64_t i1, std::int64_t t0,
                   std::int64_t t1, std::int64_t c0, std::int64_t c1, double* out) const {
        const std::int64_t w = c1 - c0;
        decltype(exp_bits(S())) acc = 0;
        for (std::int64_t i = i0; i < i1; ++i)
            for (std::int64_t tt = t0; tt < t1; ++tt, out += w) {
                const S* src = base + i * m_s0 + tt * m_s1 + c0 * m_s2;
                if (m_s2 == 1) {
                    for (std::int64_t c = 0; c < w; ++c) {
                        acc |= exp_bits(src[c]);
                        out[c] = static_cast<double>(src[c]);
                    }
                } else {
                    for (std::int64_t c = 0; c < w; ++c) {
                        acc |= exp_bits(src[c * m_s2]);
                        out[c] = static_cast<double>(src[c * m_s2]);
                    }
                }
            }
        return (acc >> (8 * sizeof(acc) - 1)) != 0;
    }

    // The full conversion names the first non-finite element in flat order (the message every
    // entry point gives); only reached on the error path.
    [[noreturn]] void fail_non_finite() const {
        (void)host_matrix(m_v, 1, m_fn, m_arg);
        throw std::invalid_argument(concat(m_fn, ": ", m_arg, " must be finite"));
    }

    const TensorView& m_v;
    const char* m_fn;
    const char* m_arg;
    std::int64_t m_n, m_t, m_d, m_s0, m_s1, m_s2;
};

/// K of the materialise route, formed by the threads BlasWorkers grants (fisher_workers.cpp):
/// each forms its samples' rows of a tile of Γ, then folds its share of the tile's columns into
/// its own partial K, every BLAS call single-threaded. `budget`: bytes for the tile of Γ (at most
/// 64 MiB and half of Γ); the workers' converted blocks (384 KiB each) and partial K's come on top.
RowMatrixXd materialize_workers(const SeqInput& a, const SeqInput& d, bool bias,
                                std::int64_t budget);

}  // namespace deadspec::detail
