// SPDX-License-Identifier: Apache-2.0
// Which BLAS/LAPACK the core calls and under which names (private to the .cpp files that call it).
// DEADSPEC_HAVE_LAPACK is set when there is one; DS_BLAS(name) spells a CBLAS/LAPACKE symbol with
// the wheel's prefix (scipy-openblas32 exports scipy_cblas_dgemm, ...) or unchanged (system).
#pragma once

#include "deadspec/config.hpp"

#if defined(DEADSPEC_BLAS_PREFIX) || defined(DEADSPEC_SYSTEM_LAPACK)
#define DEADSPEC_HAVE_LAPACK 1
#include <cblas.h>
#include <lapacke.h>

#include <cstdint>
#include <limits>
#include <stdexcept>

#include "deadspec/errors.hpp"
#endif

#if defined(DEADSPEC_BLAS_PREFIX)
#define DEADSPEC_CAT2(a, b) a##b
#define DEADSPEC_CAT(a, b) DEADSPEC_CAT2(a, b)
#define DS_BLAS(name) DEADSPEC_CAT(DEADSPEC_BLAS_PREFIX, name)
#else
#define DS_BLAS(name) name
#endif

#ifdef DEADSPEC_HAVE_LAPACK
namespace deadspec::detail {
/// BLAS takes 32-bit ints in scipy-openblas32: refuse sizes it cannot represent.
inline blasint to_blasint(std::int64_t v) {
    if (v > std::numeric_limits<blasint>::max())
        throw std::invalid_argument(
            concat("deadspec: dimension ", v, " exceeds the 32-bit BLAS index range"));
    return static_cast<blasint>(v);
}
}  // namespace deadspec::detail
#endif
