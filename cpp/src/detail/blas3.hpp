// SPDX-License-Identifier: Apache-2.0
// BLAS level-3 calls on row-major float64 operands with explicit leading dimensions and strides
// (strided views of (N, T, d) tensors), with Eigen fall-backs for builds without a BLAS.
#pragma once

#include <cstdint>

namespace deadspec::detail {

/// C (m×n, ldc) = alpha·A·Bᵀ + beta·C; A m×k (lda), B n×k (ldb), all row-major.
void gemm_nt_ld(std::int64_t m, std::int64_t n, std::int64_t k, double alpha, const double* a,
                std::int64_t lda, const double* b, std::int64_t ldb, double beta, double* c,
                std::int64_t ldc);

/// Lower triangle of C (n×n, ldc) = alpha·X·Xᵀ + beta·C, X n×k (ldx) row-major. OpenBLAS's
/// dgemmt where the wheel has it (it runs 1.1-1.4× faster than its dsyrk at n = 256 on the
/// reference machine, bench/README.md), dsyrk otherwise.
void syrk_lower_ld(std::int64_t n, std::int64_t k, double alpha, const double* x,
                   std::int64_t ldx, double beta, double* c, std::int64_t ldc);

/// For i < count: C_i (m×n, ldc) = A_iᵀ·B_i with A_i k×m (lda), B_i k×n (ldb), row-major,
/// A_i = a + i·stride_a, B_i = b + i·stride_b, C_i = c + i·stride_c. One batched dgemm where the
/// BLAS has it (OpenBLAS threads over the batch), a loop of dgemm otherwise.
void gemm_tn_batched(std::int64_t count, std::int64_t m, std::int64_t n, std::int64_t k,
                     const double* a, std::int64_t lda, std::int64_t stride_a, const double* b,
                     std::int64_t ldb, std::int64_t stride_b, double* c, std::int64_t ldc,
                     std::int64_t stride_c);

}  // namespace deadspec::detail
