// SPDX-License-Identifier: Apache-2.0
// Eigenvalues of a symmetric matrix by the two-stage tridiagonal reduction, the bulge chase run
// by a pipeline of threads (band_tridiag.cpp). Private to the core.
#pragma once

#include <cstdint>

#include <Eigen/Core>

#include "team.hpp"

namespace deadspec::detail {

/// Wall time of each stage of one syev_values_two_stage call, in seconds.
struct TwoStageTimes {
    double band = 0;   ///< dense -> band (stage 1)
    double chase = 0;  ///< band -> tridiagonal (stage 2, the pipelined bulge chase)
    double sterf = 0;  ///< eigenvalues of the tridiagonal matrix (LAPACK dsterf)
};

/// Dense -> band (stage 1): reduces the symmetric matrix given by the upper triangle of the
/// column-major n×n `a` (leading dimension ld; overwritten) by orthogonal similarity to a band
/// of kd subdiagonals, written to `ab` in LAPACK's lower band storage (column j at
/// ab + j·(kd + 1), row r of it = A(j + r, j), r <= kd), on the members of `team`.
void reduce_to_band_upper(double* a, std::int64_t n, std::int64_t ld, std::int64_t kd,
                          double* ab, Team& team);

/// Band -> tridiagonal (stage 2): `ab` holds a symmetric band matrix of order n with kd
/// subdiagonals in lower band storage (column j at ab + j·ldab) and is left unchanged; `d` (n)
/// and `e` (n − 1) receive the tridiagonal matrix. The members of `team` run the sweeps; the
/// result is the same bit for bit for any team size. The kernels are LAPACK's (dsb2st_kernels).
void band_to_tridiagonal(const double* ab, std::int64_t ldab, std::int64_t n, std::int64_t kd,
                         Team& team, double* d, double* e);

/// Ascending eigenvalues `w` of the symmetric matrix given by the upper (`upper`) or lower
/// triangle of the column-major n×n `a` (overwritten): stage 1 to a band of kd subdiagonals,
/// stage 2, then LAPACK dsterf, on a team of `threads` threads with OpenBLAS single-threaded.
/// Returns dsterf's info (> 0: not converged). `times` (optional) receives the stages' wall
/// times.
int syev_values_two_stage(Eigen::MatrixXd& a, bool upper, Eigen::VectorXd& w, std::int64_t kd,
                          int threads, TwoStageTimes* times = nullptr);

/// From this order on, eigenvalues-only spectra take syev_values_two_stage.
constexpr std::int64_t kTwoStageMinDim = 1024;

/// The band width syev_values_two_stage takes at order n in the core's eigenvalue path, or 0
/// where LAPACK's own drivers are faster (bench/README.md, "Spectra"). The environment variable
/// DEADSPEC_EIG_BAND_KD overrides it for every n above the Eigen cutoff: a width 2..256
/// forces this path with that width, 0 turns it off (tests use it to reach the path at small n).
/// \throws std::invalid_argument naming `fn` if the variable is set to anything else.
std::int64_t two_stage_band_width(std::int64_t n, const char* fn);

}  // namespace deadspec::detail
