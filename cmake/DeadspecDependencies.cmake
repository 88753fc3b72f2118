# SPDX-License-Identifier: Apache-2.0
# Dependencies: Eigen (required), a LAPACK/BLAS backend (optional), pybind11, GTest.
# Nothing is downloaded: everything comes from find_package (PyPI wheels or Debian packages).

# ---------------------------------------------------------------------------
# Python (used to locate PyPI-provided Eigen and OpenBLAS)
# ---------------------------------------------------------------------------
if(DEADSPEC_BUILD_PYTHON)
  find_package(Python 3.10 REQUIRED COMPONENTS Interpreter Development.Module)
else()
  find_package(Python 3.10 COMPONENTS Interpreter)
endif()

function(_deadspec_python_query out code)
  if(Python_EXECUTABLE)
    execute_process(COMMAND ${Python_EXECUTABLE} -c "${code}"
                    OUTPUT_VARIABLE _value OUTPUT_STRIP_TRAILING_WHITESPACE
                    RESULT_VARIABLE _rc ERROR_QUIET)
    if(_rc EQUAL 0)
      set(${out} "${_value}" PARENT_SCOPE)
    endif()
  endif()
endfunction()

# ---------------------------------------------------------------------------
# Eigen 3.4: cmeel-eigen (PyPI) installs its config under <site-packages>/cmeel.prefix,
# which CMake does not search by itself. Debian's libeigen3-dev is found without help.
# ---------------------------------------------------------------------------
# Search every sys.path entry: under pip's build isolation the build requirements live in an
# overlay that is on sys.path but is not the interpreter's purelib.
_deadspec_python_query(_cmeel_prefix
  "import os, sys; print(next((os.path.join(p, 'cmeel.prefix') for p in sys.path if p and os.path.isdir(os.path.join(p, 'cmeel.prefix'))), ''))")
if(_cmeel_prefix)
  list(PREPEND CMAKE_PREFIX_PATH "${_cmeel_prefix}")
endif()
find_package(Eigen3 CONFIG REQUIRED)
if(Eigen3_VERSION VERSION_LESS 3.4)
  message(FATAL_ERROR "deadspec: Eigen >= 3.4 is required, found ${Eigen3_VERSION}. "
                      "pip install cmeel-eigen, or apt-get install libeigen3-dev.")
endif()
message(STATUS "deadspec: Eigen ${Eigen3_VERSION} (${Eigen3_DIR})")

# ---------------------------------------------------------------------------
# LAPACK / BLAS backend
# ---------------------------------------------------------------------------
set(DEADSPEC_LAPACK_BACKEND none)
if(DEADSPEC_LAPACK STREQUAL "auto" OR DEADSPEC_LAPACK STREQUAL "scipy-openblas32")
  _deadspec_python_query(_openblas_dir
    "import scipy_openblas32 as s, os; print(os.path.join(s.get_lib_dir(), 'cmake', 'openblas'))")
  if(_openblas_dir)
    find_package(OpenBLAS CONFIG HINTS "${_openblas_dir}" NO_DEFAULT_PATH)
  endif()
  if(TARGET OpenBLAS::OpenBLAS)
    set(DEADSPEC_LAPACK_BACKEND scipy-openblas32)
  elseif(DEADSPEC_LAPACK STREQUAL "scipy-openblas32")
    message(FATAL_ERROR "deadspec: DEADSPEC_LAPACK=scipy-openblas32 but the PyPI package "
                        "scipy-openblas32 was not found. pip install scipy-openblas32.")
  endif()
endif()
if(DEADSPEC_LAPACK_BACKEND STREQUAL "none"
   AND (DEADSPEC_LAPACK STREQUAL "auto" OR DEADSPEC_LAPACK STREQUAL "system"))
  find_package(LAPACK QUIET)
  find_path(DEADSPEC_LAPACKE_INCLUDE_DIR lapacke.h)
  find_library(DEADSPEC_LAPACKE_LIBRARY lapacke)
  find_path(DEADSPEC_CBLAS_INCLUDE_DIR cblas.h)
  find_library(DEADSPEC_CBLAS_LIBRARY NAMES cblas openblas blas)
  if(LAPACK_FOUND AND DEADSPEC_LAPACKE_INCLUDE_DIR AND DEADSPEC_LAPACKE_LIBRARY
     AND DEADSPEC_CBLAS_INCLUDE_DIR AND DEADSPEC_CBLAS_LIBRARY)
    set(DEADSPEC_LAPACK_BACKEND system)
  elseif(DEADSPEC_LAPACK STREQUAL "system")
    message(FATAL_ERROR "deadspec: DEADSPEC_LAPACK=system but LAPACK + LAPACKE + CBLAS were not "
                        "found. apt-get install liblapacke-dev libopenblas-dev.")
  endif()
endif()
message(STATUS "deadspec: LAPACK backend: ${DEADSPEC_LAPACK_BACKEND}")

# ---------------------------------------------------------------------------
# pybind11, GTest
# ---------------------------------------------------------------------------
if(DEADSPEC_BUILD_PYTHON)
  _deadspec_python_query(_pybind11_dir "import pybind11; print(pybind11.get_cmake_dir())")
  find_package(pybind11 3.0 CONFIG REQUIRED HINTS "${_pybind11_dir}")
endif()
if(DEADSPEC_BUILD_TESTS)
  find_package(GTest 1.12)
  if(NOT GTest_FOUND)
    message(FATAL_ERROR "deadspec: GoogleTest is needed for the C++ tests. "
                        "apt-get install libgtest-dev, or configure with -DDEADSPEC_BUILD_TESTS=OFF.")
  endif()
endif()
