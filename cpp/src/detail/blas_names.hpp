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
#endif

#if defined(DEADSPEC_BLAS_PREFIX)
#define DEADSPEC_CAT2(a, b) a##b
#define DEADSPEC_CAT(a, b) DEADSPEC_CAT2(a, b)
#define DS_BLAS(name) DEADSPEC_CAT(DEADSPEC_BLAS_PREFIX, name)
#else
#define DS_BLAS(name) name
#endif
