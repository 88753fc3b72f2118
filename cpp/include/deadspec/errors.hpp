// SPDX-License-Identifier: Apache-2.0
// Exception types and argument-check macros of the deadspec core.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace deadspec {

/// Base class of the runtime errors deadspec raises itself (numerical failure, missing backend).
class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

/// A tensor of an unsupported dtype (surfaces in Python as TypeError).
class DTypeError : public std::invalid_argument {
public:
    using std::invalid_argument::invalid_argument;
};

/// A tensor on a device this build cannot compute on (surfaces in Python as RuntimeError).
class DeviceError : public Error {
public:
    using Error::Error;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
    std::ostringstream os;
    (os << ... << args);
    return os.str();
}
}  // namespace detail

}  // namespace deadspec

/// Throw std::invalid_argument with the concatenated message unless `cond` holds.
/// Messages follow "deadspec.<fn>: <arg> <expectation>, got <actual>".
#define DEADSPEC_CHECK_ARG(cond, ...)                                            \
    do {                                                                         \
        if (!(cond)) throw std::invalid_argument(::deadspec::detail::concat(__VA_ARGS__)); \
    } while (0)
