// SPDX-License-Identifier: Apache-2.0
// Umbrella header of the deadspec C++ core.
#pragma once

#include "deadspec/config.hpp"
#include "deadspec/ddc.hpp"
#include "deadspec/ddc_plan.hpp"
#include "deadspec/ddc_split_plan.hpp"
#include "deadspec/ddc_adam.hpp"
#include "deadspec/errors.hpp"
#include "deadspec/fisher_gram.hpp"
#include "deadspec/gram.hpp"
#include "deadspec/slope.hpp"
#include "deadspec/spectrum.hpp"
#include "deadspec/sym_eig.hpp"
#include "deadspec/types.hpp"
