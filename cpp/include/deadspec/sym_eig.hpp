// SPDX-License-Identifier: Apache-2.0
// Symmetric eigendecomposition, eigenvalues in descending order.
#pragma once

#include <string>

#include "deadspec/types.hpp"

namespace deadspec {

enum class EigStatus {
    Success,
    NotConverged,  ///< the LAPACK/Eigen iteration did not converge (info > 0)
};

struct SymEigResult {
    Eigen::VectorXd values;   ///< descending
    Eigen::MatrixXd vectors;  ///< column j is the eigenvector of values[j]; empty if not asked
    EigStatus status = EigStatus::Success;
};

/// Name of the eigensolver this build uses, e.g. "lapack-syevd (scipy-openblas32); eigen for
/// n <= 256" (small problems stay on Eigen's single-threaded solver) or "eigen".
std::string eig_backend();

/// The BLAS/LAPACK library's own description of its build ("OpenBLAS 0.3.x DYNAMIC_ARCH ...
/// Haswell MAX_THREADS=64"), or "none" when the core runs on Eigen alone.
std::string blas_info();

/// Threads the BLAS/LAPACK backend may use (OpenBLAS): the count set, or in auto mode (the
/// default) OpenBLAS's own, one per core; 1 when the core runs on Eigen alone.
int num_threads();
/// Fix the BLAS/LAPACK thread count (OpenBLAS busy-waits: next to other busy processes, fewer
/// threads than cores can be many times faster). No effect without a LAPACK backend.
/// \throws std::invalid_argument if n < 1.
void set_num_threads(int n);
/// Return to the default, auto mode: every core while the machine is quiet, 1 thread while the
/// calling thread waits for a CPU more than 20% of a call (the machine is oversubscribed).
void set_num_threads_auto();
/// The BLAS/LAPACK thread count in use now: the count set, or in auto mode the last choice
/// (all threads, or 1 while the machine is oversubscribed).
int threads_in_use();
/// The OpenMP runtime the core's optimizer passes (DDCAdamPlan, DDCSplitPlan) run their threads
/// in: the process's own, found among its loaded objects (torch's libgomp; the core links none),
/// so they share torch's thread pool. Empty when none is loaded or DEADSPEC_OPENMP=0: the passes
/// then start threads of their own.
std::string openmp_runtime();

/// Eigendecomposition of a real symmetric matrix (only the lower triangle is read).
///
/// \param a        m×m float32/float64 matrix, CPU, any strides; computed in float64.
/// \param vectors  also return the eigenvectors.
/// \throws std::invalid_argument if a is not square, is empty or holds NaN/Inf.
/// \throws std::overflow_error if an eigenvalue's magnitude exceeds float64 (a finite matrix
///         can have one, e.g. [[M, M], [M, M]] with M = 1e308), as gram() does for its result.
SymEigResult sym_eig(const TensorView& a, bool vectors = false);

/// Same, for a float64 Eigen matrix.
SymEigResult sym_eig(const Eigen::Ref<const Eigen::MatrixXd>& a, bool vectors = false);

}  // namespace deadspec
