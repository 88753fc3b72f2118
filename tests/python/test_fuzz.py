"""The fuzz suite (issue #12): hypothesis over every ``deadspec._core`` binding and every public
entry point, each input run in a worker child process with a time bound.

The machinery is in ``tests/python/fuzz/`` (``specs``: the inputs as plain data; ``strategies``:
hypothesis strategies per entry; ``examples``: explicit inputs run first; ``build`` and
``entries``: what the worker child does; ``runner``: workers, time bound, outcome classes,
summary). Each input ends in one outcome class: ``ok``, ``clean_error`` (message starts
``deadspec.``), ``model_error`` (informative: the user's model, loss_fn or path raised its own
exception, passed on unchanged with a note ``deadspec.<function>: raised by ...``), or a
finding: ``crash`` (the child died), ``hang`` (no answer within the bound), ``nonfinite`` (a
NaN/Inf output from finite inputs, other than the documented ones an entry declares:
``lambda_dir`` NaN when k̂ <= 0 or 1/(2k̂) overflows, +inf from the DDC kernels' sums where the
exact value exceeds float64), ``unclear_error`` (any other exception), ``overwrite`` (an input
file's bytes changed).

pybind11's "incompatible function arguments" TypeError is a clean error for the private
extension's entries ``_core.*`` only: they are not public entry points, and every public entry
validates its arguments before calling ``_core``. From a public entry it stays an
``unclear_error`` (a wrong-typed argument leaked through to the binding).

Sizes (:data:`fuzz.strategies.SIZES`) and what they cost (measured on this project's shared
2-core machine, load 2-3, one worker):

- CI (always): 576 inputs planned over 44 entries (~540 run: hypothesis's repeated draws are
  dropped), one worker, ``CI_TIMEOUT`` per input: ~30 s (generation ~2 s; execution ~27 s, of
  which ~23 s are the two pinned hangs). Every (entry, finding class) pair is one test below,
  so a finding fails exactly the test naming its entry and class and prints the shortest input
  that shows it, as an ``@example``.
- medium (by hand): 9,856 planned, 9,162 run in 116 s: generation 38 s (239 inputs/s),
  execution 77 s (119 inputs/s; ~250 inputs/s without the two pinned hangs at the 20 s bound).
- long (``--run-slow``): 4.2·10⁵ planned, ~3.9·10⁵ run. Estimated from the medium rates: ~55
  min on one core, ~28 min with ``DEADSPEC_FUZZ_WORKERS=2`` on two (generation and execution
  both split over the workers). Summary JSON (plus every finding's result) at
  ``$DEADSPEC_FUZZ_JSON``, default ``<tmp>/deadspec-fuzz-long.json``.
- by hand: ``python tests/python/fuzz/runner.py --size medium --workers 1 --json out.json``
  (``--size`` also takes a number of inputs, ``--entries a,b`` some entries only; the exit
  status is 1 when there are findings).

:data:`KNOWN` lists the findings the CI run shows that are not fixed yet, as
``xfail(strict=True)``: when a fix lands its test passes, strict xfail turns that into a
failure, and the line must go. It is empty: the CI run asserts zero findings.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from fuzz import runner, strategies
from fuzz.specs import (
    CLEAN,
    CRASH,
    FINDINGS,
    HANG,
    MODEL_ERROR,
    NONFINITE,
    OK,
    OVERWRITE,
    UNCLEAR,
    Arr,
    Capsule,
    Case,
    Layer,
    Model,
    Num,
)

#: Time bound of one input in the CI run, seconds. Inputs take milliseconds; the slowest
#: (a first DDC step, a command-line read with a plot) about 2 s on a loaded 2-core machine.
CI_TIMEOUT = float(os.environ.get("DEADSPEC_FUZZ_TIMEOUT", "10"))
WORKERS = int(os.environ.get("DEADSPEC_FUZZ_WORKERS", "1"))

#: (entry, outcome class) -> a finding the CI run shows and that is not fixed yet, pinned by an
#: input of fuzz/examples.py (so it does not depend on what hypothesis draws), as a strict xfail:
#: when the fix lands its test XPASSes, which fails, and the line must go. Empty: the CI run
#: asserts zero findings. Every finding fixed so far keeps its example in fuzz/examples.py.
KNOWN: dict[tuple[str, str], str] = {}


def _param(entry: str, outcome: str) -> object:
    reason = KNOWN.get((entry, outcome))
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(entry, outcome, marks=marks, id=f"{entry}-{outcome}")


@pytest.fixture(scope="module")
def ci_run():
    summary, results = runner.run(strategies.plan("ci"), workers=WORKERS, timeout=CI_TIMEOUT)
    print(runner.format_summary(summary))
    if os.environ.get("DEADSPEC_FUZZ_JSON"):
        runner.write_json(os.environ["DEADSPEC_FUZZ_JSON"], summary, results)
    return summary, results


def _report(finding: dict) -> str:
    lines = [f"{finding['entry']}: {finding['count']} input(s) ended in {finding['outcome']}"]
    for k in finding["kinds"]:
        ex = k["examples"][0]
        lines += [f"  x{k['count']} {k['signature']}", f"    {ex['detail'][:400]}",
                  f"    @example({ex['case']})"]
    return "\n".join(lines)


@pytest.mark.parametrize(
    "entry,outcome", [_param(e, o) for e in strategies.ENTRY_NAMES for o in FINDINGS]
)
def test_fuzz_ci(ci_run, entry, outcome):
    """No crash, hang, silent non-finite result, unclear error or write over an input."""
    summary, _ = ci_run
    found = [f for f in summary["findings"] if f["entry"] == entry and f["outcome"] == outcome]
    assert not found, _report(found[0])


def test_fuzz_ci_reaches_results_and_errors(ci_run):
    """Every entry ran its inputs, and they reach both the computation (some ``ok``) and the
    validation (some clean error or finding): a fuzz run that only ever hits one door tests
    little. The suite's own input builder never failed."""
    summary, _ = ci_run
    plan = strategies.plan("ci")
    per = summary["per_entry"]
    assert sorted(per) == sorted(plan) and summary["planned"] == plan
    for entry, n in plan.items():
        d = per[entry]
        assert d["inputs"] >= 0.5 * n, (entry, d)  # repeated draws are dropped
        assert d.get(OK, 0) >= 1, (entry, d)
        refused = d.get(CLEAN, 0) + d.get(MODEL_ERROR, 0)
        assert refused + sum(d.get(o, 0) for o in FINDINGS) >= 1, (entry, d)
    assert summary["outcomes"][runner.HARNESS] == 0, [
        f for f in summary["findings"] if f["outcome"] == runner.HARNESS
    ]


def test_runner_classifies_each_outcome(tmp_path):
    """The worker and the parent tell every outcome class apart, name the input, and go on
    with a fresh worker after a crash or a hang."""
    cases = [
        Case("selftest", ("ok",)),
        Case("selftest", ("abort",)),
        Case("selftest", ("ok",)),
        Case("selftest", ("sleep", 60)),
        Case("selftest", ("clean",)),
        Case("selftest", ("unclear",)),
        Case("selftest", ("model",)),
        Case("selftest", ("pybind",)),  # from a public entry: unclear
        Case("_core.gram", (Capsule(Arr("numpy", "float64", (2, 2))),), {"side": None}),
        Case("selftest", ("nan",)),
        Case("selftest", ("overwrite",)),
        Case("spectrum", (Arr("numpy", "float64", (2, 2), fill="psd", special=((0, "nan"),)),)),
        Case("gram", (Arr("numpy", "float64", (3, 2)),)),
    ]
    results = runner.execute(cases, timeout=5.0, root=tmp_path)
    got = [r["outcome"] for r in results]
    assert got == [OK, CRASH, OK, HANG, CLEAN, UNCLEAR, MODEL_ERROR, UNCLEAR, CLEAN, NONFINITE,
                   OVERWRITE, CLEAN, OK]
    assert "SIGABRT" in results[1]["detail"]
    assert "deadspec.selftest: raised by the model's forward" in results[6]["detail"]
    assert "TypeError (pybind11)" in results[8]["detail"]
    assert results[3]["case"] == repr(cases[3])
    summary = runner.summarize(results)
    kinds = {(f["entry"], f["outcome"]) for f in summary["findings"]}
    assert kinds == {("selftest", o)
                     for o in (CRASH, HANG, UNCLEAR, NONFINITE, OVERWRITE, MODEL_ERROR)}
    text = runner.format_summary(summary)
    assert "selftest crash x1" in text and "Case('selftest', ('abort',))" in text


def test_nonfinite_needs_finite_inputs(tmp_path):
    """A NaN output from a NaN input is not a silent non-finite result (it is told apart as
    ``nonfinite_in``); inputs are judged before the call writes into them."""
    nan_model = Model("mlp", widths=(2, 2), special=((0, "nan"),))
    cases = [
        Case("optim.DDCAdam", (nan_model,), {"nonfinite": "skip"}, (("nograd",),)),
        Case("spectrum_from_eigenvalues", ([1.0, 0.5],), {"gap_ratio": Num("nan")}),
    ]
    got = [r["outcome"] for r in runner.execute(cases, timeout=30.0, root=tmp_path)]
    assert got[0] == "nonfinite_in"
    assert got[1] in (CLEAN, "nonfinite_in")


def test_cases_print_as_examples():
    """Every case's repr rebuilds it (so a finding can be pasted into ``@example``)."""
    from fuzz import specs

    namespace = {name: getattr(specs, name) for name in specs.__all__}
    for entry in strategies.ENTRY_NAMES:
        for c in strategies.generate(entry, 4):
            assert eval(repr(c), namespace) == c, repr(c)  # noqa: S307 - our own reprs
    assert repr(Case("x", (Layer(2, linear_only=True), Num("nan")))) == (
        "Case('x', (Layer(index=2, linear_only=True), Num('nan')))"
    )


def test_sizes():
    """The long run has at least 10⁵ inputs (after repeats are dropped: a few percent); the CI
    run a few hundred."""
    assert sum(strategies.plan("long").values()) >= 400_000
    assert 300 <= sum(strategies.plan("ci").values()) <= 1000
    assert set(strategies.ENTRY_NAMES) >= {
        "gram", "fisher_gram", "spectrum", "sym_eig", "fit_slope", "logdet_top",
        "GramAccumulator", "spectrum_from_eigenvalues", "read", "approach_slope",
        "direction_order", "classify_directions", "gauges.discover", "gauges.check",
        "optim.DDCAdam", "optim.DDCMuon", "llc.estimate", "monitor.DeadDirectionMonitor",
        "cli.main",
    }


def test_every_binding_is_fuzzed():
    """Every function and class of ``deadspec._core`` is called by some entry."""
    import deadspec._core as core

    names = {n for n in dir(core) if not n.startswith("_") and callable(getattr(core, n))}
    names -= {"Error"}  # the exception type
    covered = {e.split(".", 1)[1] for e in strategies.ENTRY_NAMES if e.startswith("_core.")}
    covered |= {"build_info", "eig_backend", "num_threads", "set_num_threads",  # _core.noargs
                "threads_in_use", "set_num_threads_auto", "openmp_runtime"}
    assert names <= covered, sorted(names - covered)


#: Public names that are called through another entry: the small functions of entry "misc", and
#: result or configuration types (built by the entries, or passed as a loss).
_VIA_MISC = {"build_info", "num_threads", "set_num_threads", "cmake_dir", "default_rtol",
             "fisher_route"}
_TYPES = {"ApproachSlope", "DirectionClass", "DirectionOrder", "Error", "GaugeZero",
          "LayerReading", "Reading", "Slope", "Spectrum", "TokenCrossEntropy", "__version__"}


def test_every_public_entry_is_fuzzed():
    """Every name of ``deadspec.__all__`` is an entry of the suite, a function of entry "misc",
    or a type the entries build (``TokenCrossEntropy``: ``Loss("token_ce")``)."""
    import deadspec

    assert set(deadspec.__all__) <= set(strategies.ENTRY_NAMES) | _VIA_MISC | _TYPES, sorted(
        set(deadspec.__all__) - set(strategies.ENTRY_NAMES) - _VIA_MISC - _TYPES
    )


@pytest.mark.slow
def test_fuzz_long():
    """The long run (4.2·10⁵ inputs planned, ~3.9·10⁵ run after repeats are dropped): no
    findings at all. Writes the summary and the result of every finding to
    ``$DEADSPEC_FUZZ_JSON`` or ``<tmp>/deadspec-fuzz-long.json``. ``$DEADSPEC_FUZZ_SIZE``
    runs another size instead (a name of :data:`fuzz.strategies.SIZES` or a number)."""
    path = Path(os.environ.get("DEADSPEC_FUZZ_JSON")
                or Path(tempfile.gettempdir()) / "deadspec-fuzz-long.json")
    size = os.environ.get("DEADSPEC_FUZZ_SIZE", "long")  # another size name, or a number
    summary, results = runner.run(strategies.plan(size), workers=WORKERS,
                                  timeout=float(os.environ.get("DEADSPEC_FUZZ_TIMEOUT", "20")),
                                  progress=True)
    runner.write_json(path, summary, results)
    print(runner.format_summary(summary))
    print(f"wrote {path}")
    assert size != "long" or summary["inputs"] >= 100_000
    found = [f for f in summary["findings"] if f["outcome"] in FINDINGS]
    assert not found, "\n".join(_report(f) for f in found)


def test_overflow_spec_accepts_only_what_the_exact_value_justifies():
    """The non-finite values the suite accepts from the DDC kernels' sums: ±inf where the exact
    sum exceeds float64 (with its sign), anything where an element had a quantity beyond the
    parameter's dtype; never a NaN or an inf whose exact value is finite."""
    import math

    import numpy as np

    from fuzz import entries

    inf, nan = math.inf, math.nan
    big, one = np.array([[1e308, 1e308]]), np.ones((1, 2))
    fine, beyond = np.zeros((1, 2), dtype=bool), np.ones((1, 2), dtype=bool)
    assert entries._sums_accepted([inf], big, one, fine, 1)[0] == 0.0  # 2e308: accepted
    assert math.isinf(entries._sums_accepted([-inf], big, one, fine, 1)[0])  # wrong sign
    assert math.isnan(entries._sums_accepted([nan], big, one, fine, 1)[0])  # never NaN
    cancel = np.array([[1e308, -1e308]])
    assert math.isinf(entries._sums_accepted([inf], cancel, one, fine, 1)[0])  # exact 0
    assert entries._sums_accepted([nan], big, one, beyond, 1)[0] == 0.0
    assert entries._sums_accepted([inf, inf], big, one, fine, 0).tolist() == [inf, inf]
