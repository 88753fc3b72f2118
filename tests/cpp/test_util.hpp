// SPDX-License-Identifier: Apache-2.0
// Seeded data generators shared by the C++ tests.
#pragma once

#include <random>

#include "deadspec/types.hpp"

namespace dtest {
using deadspec::RowMatrixXd;

inline RowMatrixXd make_data(Eigen::Index rows, Eigen::Index cols, unsigned seed) {
    std::mt19937 gen(seed);
    std::normal_distribution<double> dist;
    RowMatrixXd m(rows, cols);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = dist(gen);
    return m;
}

}  // namespace dtest
