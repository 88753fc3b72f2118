# SPDX-License-Identifier: Apache-2.0
# deadspec_set_warnings(target): warning policy for deadspec's own targets only.
function(deadspec_set_warnings target)
  if(MSVC)
    target_compile_options(${target} PRIVATE /W4)
  else()
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow -Wconversion
                                             -Wno-sign-conversion)
  endif()
  if(DEADSPEC_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE $<IF:$<CXX_COMPILER_ID:MSVC>,/WX,-Werror>)
  endif()
endfunction()

# deadspec_set_arch(target): an opt-in -march (never -march=native in a wheel).
# It is PUBLIC on purpose: Eigen objects cross the core's API, and Eigen's heap alignment follows
# the instruction set (32 bytes with AVX, 16 without). Every translation unit that shares Eigen
# objects with the core must be built with the same -march, or frees reach the wrong allocator.
# The heavy kernels run in OpenBLAS, which dispatches on the CPU at run time, so the default
# (empty) loses little.
function(deadspec_set_arch target)
  if(DEADSPEC_ARCH AND CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64" AND NOT MSVC)
    target_compile_options(${target} PUBLIC -march=${DEADSPEC_ARCH})
  endif()
endfunction()
