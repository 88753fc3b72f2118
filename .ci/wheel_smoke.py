"""Smoke test of an installed deadspec wheel, run by .ci/wheel-check in a fresh virtual environment.

It checks that the package imported is the installed one (not a source tree), that the extension
found OpenBLAS/LAPACK in the ``scipy-openblas32`` wheel beside it (the repaired wheel does not
carry it), and runs one op of each kind: a spectrum large enough to go through LAPACK, a
``deadspec.read`` of a tiny MLP and a few ``DDCAdam`` steps. Every check raises with the numbers
it got; the numbers are printed for the CI log.
"""

from __future__ import annotations

import math
import os
import sys
import sysconfig


def fail(what: str) -> None:
    raise SystemExit(f"wheel_smoke: {what}")


def loaded_libraries() -> list[str]:
    """Paths of the files mapped into this process (the shared libraries it has loaded)."""
    with open("/proc/self/maps") as maps:
        fields = [line.split(maxsplit=5) for line in maps]
    return sorted({f[5].strip() for f in fields if len(f) == 6 and f[5].startswith("/")})


def check_install() -> None:
    import deadspec

    site = os.path.realpath(sysconfig.get_paths()["platlib"])
    where = os.path.realpath(deadspec.__file__)
    print(f"deadspec {deadspec.__version__} from {where}")
    if not where.startswith(site + os.sep):
        fail(f"expected deadspec imported from {site}, got {where}")
    info = deadspec.build_info()
    print(f"build_info: {info}")
    if info["lapack"] != "scipy-openblas32" or info["cuda"]:
        fail(f"expected a CPU build on scipy-openblas32, got {info}")
    blas = [p for p in loaded_libraries() if os.path.basename(p) == "libscipy_openblas.so"]
    want = os.path.join(site, "scipy_openblas32", "lib", "libscipy_openblas.so")
    print(f"libscipy_openblas.so loaded from {blas}")
    if [os.path.realpath(p) for p in blas] != [os.path.realpath(want)]:
        fail(f"expected libscipy_openblas.so loaded once from {want}, got {blas}")
    cmake_dir = deadspec.cmake_dir()
    print(f"cmake_dir: {cmake_dir}")
    if not os.path.isfile(os.path.join(site, "deadspec", "lib", "libdeadspec_core.a")):
        fail(f"expected the static core under {site}/deadspec/lib, found none")


def check_lapack_spectrum() -> None:
    import numpy as np

    import deadspec

    # 400 samples of 300 features of rank 250: the 300² Gram is past the Eigen cut-off (256),
    # so this eigendecomposition runs in the wheel's LAPACK (OpenBLAS syevd).
    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 250)) @ rng.standard_normal((250, 300))
    spec = deadspec.spectrum(deadspec.gram(a))
    print(f"spectrum 300x300 (rank 250): active={spec.active} "
          f"structural_zeros={spec.structural_zeros} logdet_plus={spec.logdet_plus:.6f}")
    if spec.active != 250 or spec.structural_zeros != 50:
        fail(f"expected active=250, structural_zeros=50, got {spec.active}, "
             f"{spec.structural_zeros}")


def check_read_and_step() -> None:
    import torch

    import deadspec

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    with torch.no_grad():  # two hidden units that never fire: two structural zeros
        model[0].weight[4:].zero_()
        model[0].bias[4:].zero_()
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    reading = deadspec.read(model, x, targets=y)
    print(reading)
    act = reading["0"].activation
    if act.active != 4 or act.structural_zeros != 2:
        fail(f"expected layer 0 activation active=4, structural_zeros=2, got {act.active}, "
             f"{act.structural_zeros}")

    opt = deadspec.optim.DDCAdam(model, lr=1e-2)
    losses = []
    for _ in range(20):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    print(f"DDCAdam: loss {losses[0]:.6f} -> {losses[-1]:.6f} in {len(losses)} steps")
    if not all(map(math.isfinite, losses)) or not losses[-1] < losses[0]:
        fail(f"expected finite, decreasing losses, got {losses}")


def main() -> None:
    print(f"python {sys.version.split()[0]} at {sys.executable}")
    check_install()
    check_lapack_spectrum()
    check_read_and_step()
    print("wheel_smoke: OK")


if __name__ == "__main__":
    main()
