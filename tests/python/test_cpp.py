"""The C++ side of the test suite: GoogleTest unit tests (ctest) and the find_package consumer.

Both build with CMake in a temporary folder. The consumer is configured against the installed
package's SDK (``deadspec.cmake_dir()``), so this proves that a C++ trainer can link the core
straight from ``pip install``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import deadspec

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}"
            f"\n--- stdout\n{proc.stdout[-6000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc


def _generator() -> list[str]:
    return ["-G", "Ninja"] if shutil.which("ninja") else []


#: Set by .ci/run, which installs GoogleTest: there a missing GoogleTest fails instead of skipping.
REQUIRE_ENV = "DEADSPEC_REQUIRE_CPP_TESTS"
GTEST_REMEDY = (
    "GoogleTest not found, so the C++ unit tests were not built: apt-get install libgtest-dev "
    "(Debian/Ubuntu) to run them"
)


def _configure_cpp_tests(build: Path, *extra: str) -> subprocess.CompletedProcess | None:
    """Configure the C++ tests in ``build``; None when GoogleTest is missing."""
    cmd = [
        "cmake", "-S", str(ROOT), "-B", str(build), *_generator(),
        "-DCMAKE_BUILD_TYPE=Release", "-DDEADSPEC_BUILD_TESTS=ON", "-DDEADSPEC_BUILD_PYTHON=OFF",
        "-DDEADSPEC_INSTALL=OFF", "-DDEADSPEC_WARNINGS_AS_ERRORS=ON",
        f"-DPython_EXECUTABLE={sys.executable}", *extra,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 and "GoogleTest is needed" in proc.stdout + proc.stderr:
        return None
    if proc.returncode != 0:
        _run(cmd)  # raises with the output
    return proc


def test_cpp_unit_tests(tmp_path_factory):
    build = tmp_path_factory.mktemp("cpp-tests")
    if _configure_cpp_tests(build) is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{GTEST_REMEDY} ({REQUIRE_ENV} is set: CI installs GoogleTest)")
        pytest.skip(GTEST_REMEDY)
    _run(["cmake", "--build", str(build), "--parallel", str(os.cpu_count() or 2)])
    proc = _run(["ctest", "--test-dir", str(build), "--output-on-failure"])
    assert "100% tests passed" in proc.stdout, proc.stdout[-3000:]


def test_missing_googletest_is_recognised(tmp_path):
    # as on a machine without libgtest-dev: the configure step is recognised, not an error
    assert _configure_cpp_tests(tmp_path, "-DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON") is None


def test_consumer_links_installed_sdk(tmp_path_factory):
    cmake_dir = deadspec.cmake_dir()  # raises FileNotFoundError if the SDK is not installed
    build = tmp_path_factory.mktemp("consumer")
    _run(
        ["cmake", "-S", str(ROOT / "tests" / "consumer"), "-B", str(build), *_generator(),
         "-DCMAKE_BUILD_TYPE=Release", f"-Ddeadspec_DIR={cmake_dir}"]
    )
    _run(["cmake", "--build", str(build)])
    exe = build / "consumer"
    proc = _run([str(exe)])
    assert "OK deadspec " + deadspec.__version__ in proc.stdout, proc.stdout
    assert "active=2 structural_zeros=1" in proc.stdout, proc.stdout


def test_cmake_dir_points_at_a_versioned_config():
    path = Path(deadspec.cmake_dir())
    assert (path / "deadspecConfig.cmake").is_file()
    assert (path / "deadspecConfigVersion.cmake").is_file()
    assert (path / "deadspecTargets.cmake").is_file()
    assert deadspec.__version__ in (path / "deadspecConfigVersion.cmake").read_text()
