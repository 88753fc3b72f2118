"""Every public entry point answers a wrong argument with a clear error.

Each case passes a wrong type, shape or empty input to a public function, class or CLI
subcommand and asserts the exception type and a fragment of the message: it names the function
(``deadspec.<function>:``), the argument (and the layer, where there is one), what was
expected and what was got. None of these may surface as pybind11's "incompatible function
arguments", an ``AttributeError``/``TypeError`` from deep inside, or a message naming an
internal function (``deadspec.spectrum`` for a :func:`deadspec.read`, ``GramAccumulator`` for
a layer). The CLI cases run ``deadspec.cli.main`` in-process: exit status 2, one
``deadspec: error:`` line, no traceback.
"""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import deadspec
from deadspec import cli, llc, optim
from deadspec import gauges as G
from deadspec.integrations.huggingface import DeadDirectionCallback
from deadspec.monitor import DeadDirectionMonitor

torch.manual_seed(0)
MODEL = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
X = torch.randn(16, 4)
Y = torch.randint(0, 3, (16,))
N_PARAMS = sum(p.numel() for p in MODEL.parameters())
CE = llc.cross_entropy_nll


class _ZeroWidth(nn.Module):
    """A layer with no output features (an empty activation Gram)."""

    def __init__(self) -> None:
        super().__init__()
        with warnings.catch_warnings():  # torch: "Initializing zero-element tensors is a no-op"
            warnings.simplefilter("ignore", UserWarning)
            self.empty = nn.Linear(4, 0)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) + self.empty(x).sum(-1, keepdim=True)


def _monitor(**kw):
    return DeadDirectionMonitor(MODEL, **{"inputs": X, "targets": Y, **kw})


def _muon_step(**kw):
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = optim.DDCMuon(model, **kw)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()


def _recorded():
    mon = _monitor(fisher=False)
    mon.step(0)
    return mon


# (id, call, exception type, message fragment: a regular expression)
CASES = [
    # -- low-level ops: validated before the core, never pybind11's "incompatible arguments"
    ("gram-x-str", lambda: deadspec.gram("abc"), TypeError,
     r"deadspec\.gram: x must be a torch\.Tensor or a numpy array of float32 or float64, got str"),
    ("gram-x-ragged", lambda: deadspec.gram([[1.0, 2.0], [3.0]]), TypeError,
     r"deadspec\.gram: x must be .*got a list that numpy cannot turn into an array"),
    ("gram-x-int", lambda: deadspec.gram(torch.ones(3, 3, dtype=torch.int64)), TypeError,
     r"deadspec\.gram: x must be float32 or float64, got int64"),
    ("gram-x-3d", lambda: deadspec.gram(torch.ones(2, 3, 3)), ValueError,
     r"deadspec\.gram: x must be 2-D \(N, h\), got shape \(2, 3, 3\)"),
    ("gram-x-empty", lambda: deadspec.gram(torch.ones(0, 3)), ValueError,
     r"deadspec\.gram: x must not be empty, got shape \(0, 3\)"),
    ("gram-center", lambda: deadspec.gram(X, center="yes"), TypeError,
     r"deadspec\.gram: center must be a bool, got str 'yes'"),
    ("gram-side", lambda: deadspec.gram(X, side=1), ValueError,
     r"deadspec\.gram: side must be one of \('auto', 'feature', 'sample'\), got 1"),
    ("fisher_gram-bias", lambda: deadspec.fisher_gram(X, torch.randn(16, 3), bias="x"),
     TypeError, r"deadspec\.fisher_gram: bias must be a bool, got str"),
    ("fisher_gram-grads-rows", lambda: deadspec.fisher_gram(X, torch.randn(5, 3)), ValueError,
     r"deadspec\.fisher_gram: grads must have the same number of samples N as acts \(16\)"),
    ("fisher_gram-acts-none", lambda: deadspec.fisher_gram(None, X), TypeError,
     r"deadspec\.fisher_gram: acts must be a torch\.Tensor .*got NoneType"),
    ("fisher_route-str", lambda: deadspec.fisher_route("a", 1, 2, 3), TypeError,
     r"deadspec\.fisher_route: n must be an int, got str 'a'"),
    ("fisher_route-float", lambda: deadspec.fisher_route(4, 1.5, 2, 3), TypeError,
     r"deadspec\.fisher_route: t must be an int, got float 1\.5"),
    ("fisher_route-negative", lambda: deadspec.fisher_route(-1, 1, 2, 3), ValueError,
     r"deadspec\.fisher_route: n must be >= 1, got -1"),
    ("sym_eig-vectors", lambda: deadspec.sym_eig(torch.eye(3), vectors="x"), TypeError,
     r"deadspec\.sym_eig: vectors must be a bool, got str 'x'"),
    ("sym_eig-a-str", lambda: deadspec.sym_eig("abc"), TypeError,
     r"deadspec\.sym_eig: a must be a torch\.Tensor or a numpy array"),
    ("sym_eig-not-square", lambda: deadspec.sym_eig(torch.ones(3, 4)), ValueError,
     r"deadspec\.sym_eig: a must be a square matrix, got shape \(3, 4\)"),
    ("spectrum-gap_ratio", lambda: deadspec.spectrum(torch.eye(3), gap_ratio="x"), TypeError,
     r"deadspec\.spectrum: gap_ratio must be a number, got str 'x'"),
    ("spectrum-rtol", lambda: deadspec.spectrum(torch.eye(3), rtol="x"), TypeError,
     r"deadspec\.spectrum: rtol must be a number or None, got str 'x'"),
    ("spectrum-rtol_size", lambda: deadspec.spectrum(torch.eye(3), rtol_size="x"), TypeError,
     r"deadspec\.spectrum: rtol_size must be an int or None, got str 'x'"),
    ("spectrum-vectors", lambda: deadspec.spectrum(torch.eye(3), vectors=[1]), TypeError,
     r"deadspec\.spectrum: vectors must be a bool, got list"),
    ("spectrum-input_dtype", lambda: deadspec.spectrum(torch.eye(3), input_dtype="int7"),
     TypeError, r"deadspec\.spectrum: input_dtype must be one of \('float64', .*got 'int7'"),
    ("spectrum_from_eigenvalues-str", lambda: deadspec.spectrum_from_eigenvalues("abc"),
     TypeError, r"deadspec\.spectrum_from_eigenvalues: values must be a 1-D sequence, array or "
     r"tensor of numbers, got str"),
    ("spectrum_from_eigenvalues-empty", lambda: deadspec.spectrum_from_eigenvalues([]),
     ValueError, r"deadspec\.spectrum_from_eigenvalues: values must not be empty, got shape"),
    ("spectrum_from_eigenvalues-2d", lambda: deadspec.spectrum_from_eigenvalues(np.ones((2, 2))),
     ValueError, r"deadspec\.spectrum_from_eigenvalues: values must be 1-D, got shape \(2, 2\)"),
    ("spectrum_from_eigenvalues-meta", lambda: deadspec.spectrum_from_eigenvalues(
        torch.ones(3, device="meta")), ValueError,
     r"deadspec\.spectrum_from_eigenvalues: values must be a tensor that holds its values, got "
     r"a tensor without data \(device 'meta', shape \(3,\)\)"),
    ("gram-x-meta", lambda: deadspec.gram(torch.ones(3, 2, device="meta")), ValueError,
     r"deadspec\.gram: x must be a tensor that holds its values, got a tensor without data"),
    ("fit_slope-meta", lambda: deadspec.fit_slope(torch.ones(3, device="meta"), [1, 2, 3]),
     ValueError, r"deadspec\.fit_slope: x must be a tensor that holds its values"),
    ("logdet_top-eigenvalues", lambda: deadspec.logdet_top("abc", 1), TypeError,
     r"deadspec\.logdet_top: eigenvalues must be a 1-D sequence, array or tensor of numbers"),
    ("logdet_top-k", lambda: deadspec.logdet_top(np.ones(3), "a"), TypeError,
     r"deadspec\.logdet_top: k must be an int, got str 'a'"),
    ("default_rtol-dtype", lambda: deadspec.default_rtol("int7", 3), TypeError,
     r"deadspec\.default_rtol: input_dtype must be one of .*got 'int7'"),
    ("default_rtol-size", lambda: deadspec.default_rtol("float32", "a"), TypeError,
     r"deadspec\.default_rtol: size must be an int, got str 'a'"),
    ("fit_slope-str", lambda: deadspec.fit_slope("abc", [1, 2]), TypeError,
     r"deadspec\.fit_slope: x must be a 1-D sequence, array or tensor of numbers, got str"),
    ("fit_slope-dict", lambda: deadspec.fit_slope([1, 2], {1: 2}), TypeError,
     r"deadspec\.fit_slope: y must be .*got dict"),
    ("fit_slope-lengths", lambda: deadspec.fit_slope([1, 2, 3], [1, 2]), ValueError,
     r"deadspec\.fit_slope: y must have as many points as x \(3\), got 2"),
    ("GramAccumulator-features-str", lambda: deadspec.GramAccumulator("a"), TypeError,
     r"deadspec\.GramAccumulator: features must be an int, got str 'a'"),
    ("GramAccumulator-features-float", lambda: deadspec.GramAccumulator(2.5), TypeError,
     r"deadspec\.GramAccumulator: features must be an int, got float 2\.5"),
    ("GramAccumulator-features-0", lambda: deadspec.GramAccumulator(0), ValueError,
     r"deadspec\.GramAccumulator: features must be >= 1, got 0"),
    ("GramAccumulator-add-columns", lambda: deadspec.GramAccumulator(3).add(torch.ones(2, 4)),
     ValueError, r"deadspec\.GramAccumulator\.add: batch must have 3 columns, got shape \(2, 4\)"),
    ("GramAccumulator-gram-center", lambda: deadspec.GramAccumulator(2).add(torch.ones(3, 2))
     .gram(center="x"), TypeError, r"deadspec\.GramAccumulator\.gram: center must be a bool"),
    ("logdet_top-k-int64", lambda: deadspec.logdet_top(np.ones(3), 2**64), ValueError,
     r"deadspec\.logdet_top: k must be <= 9223372036854775807, got 18446744073709551616"),
    ("fisher_route-int64", lambda: deadspec.fisher_route(3, 2**64, 3, 2), ValueError,
     r"deadspec\.fisher_route: t must be <= 9223372036854775807"),
    ("default_rtol-size-int64", lambda: deadspec.default_rtol("float16", 2**64), ValueError,
     r"deadspec\.default_rtol: size must be <= 9223372036854775807"),
    ("spectrum-rtol_size-int64", lambda: deadspec.spectrum(torch.eye(2), rtol_size=2**64),
     ValueError, r"deadspec\.spectrum: rtol_size must be <= 9223372036854775807"),
    ("GramAccumulator-features-int64", lambda: deadspec.GramAccumulator(2**64), ValueError,
     r"deadspec\.GramAccumulator: features must be <= 9223372036854775807"),
    ("set_num_threads-int32", lambda: deadspec.set_num_threads(2**31), ValueError,
     r"deadspec\.set_num_threads: n must be <= 2147483647, got 2147483648"),
    ("set_num_threads-int32-negative", lambda: deadspec.set_num_threads(-(2**62)), ValueError,
     r"deadspec\.set_num_threads: n must be >= -2147483648, got -4611686018427387904"),
    ("set_num_threads", lambda: deadspec.set_num_threads("a"), TypeError,
     r"deadspec\.set_num_threads: n must be an int, got str 'a'"),
    # -- read
    ("read-layers-int", lambda: deadspec.read(MODEL, X, layers=0, fisher=False), TypeError,
     r"deadspec\.read: layers must be a module name \(str\), a sequence of them or None, "
     r"got int"),
    ("read-layers-int-in-list", lambda: deadspec.read(MODEL, X, layers=["0", 2], fisher=False),
     TypeError, r"deadspec\.read: layer names must be str, got int 2"),
    ("read-fisher-str", lambda: deadspec.read(MODEL, X, targets=Y, fisher="no"), TypeError,
     r"deadspec\.read: fisher must be a bool, got str 'no'"),
    ("read-rtol-str", lambda: deadspec.read(MODEL, X, targets=Y, rtol="a"), TypeError,
     r"deadspec\.read: rtol must be a number or None, got str 'a'"),
    ("read-rtol-range", lambda: deadspec.read(MODEL, X, targets=Y, rtol=2.0), ValueError,
     r"deadspec\.read: rtol must be in \[0, 1\) or None, got 2\.0"),
    ("read-gap_ratio", lambda: deadspec.read(MODEL, X, targets=Y, gap_ratio=0.5), ValueError,
     r"deadspec\.read: gap_ratio must be > 1, got 0\.5"),
    ("read-seed", lambda: deadspec.read(MODEL, X, labels="sampled", seed="a"), TypeError,
     r"deadspec\.read: seed must be an int or None, got str 'a'"),
    ("read-task", lambda: deadspec.read(MODEL, X, targets=Y, task="foo"), ValueError,
     r"deadspec\.read: task must be one of \('classification', 'regression'\), got 'foo'"),
    ("read-joint", lambda: deadspec.read(MODEL, X, targets=Y, joint=None), TypeError,
     r"deadspec\.read: joint must be a bool, got NoneType"),
    ("read-targets-range", lambda: deadspec.read(MODEL, X, targets=torch.full((16,), 7)),
     ValueError, r"deadspec\.read: integer targets must be class indices in \[0, 3\) .*got "
     r"values in \[7, 7\]"),
    ("read-zero-width-layer", lambda: deadspec.read(_ZeroWidth(), X, layers=["empty"],
                                                     fisher=False), ValueError,
     r"deadspec\.read: layer 'empty' must output at least one feature, got rows of shape "
     r"\(16, 0\)"),
    ("read-inputs-ndarray", lambda: deadspec.read(MODEL, X.numpy(), fisher=False), TypeError,
     r"deadspec\.read: inputs must be a torch\.Tensor or a non-empty tuple of tensors .*got "
     r"ndarray"),
    ("read-targets-str", lambda: deadspec.read(MODEL, X, targets="y"), TypeError,
     r"deadspec\.read: targets must be a torch\.Tensor, got str"),
    # -- approach
    ("approach_slope-targets", lambda: deadspec.approach_slope(
        MODEL, X, layer="0", units=[0], side="fisher", targets="y"), TypeError,
     r"deadspec\.approach_slope: targets must be a torch\.Tensor, got str"),
    ("approach_slope-no-targets", lambda: deadspec.approach_slope(
        MODEL, X, layer="0", units=[0], side="fisher"), ValueError,
     r"deadspec\.approach_slope: the Fisher side needs targets"),
    ("approach_slope-center", lambda: deadspec.approach_slope(
        MODEL, X, layer="0", units=[0], center="x"), TypeError,
     r"deadspec\.approach_slope: center must be a bool, got str 'x'"),
    ("approach_slope-progress", lambda: deadspec.approach_slope(
        MODEL, X, layer="0", units=[0], progress="x"), TypeError,
     r"deadspec\.approach_slope: progress must be a bool, got str 'x'"),
    ("approach_slope-layer-relu", lambda: deadspec.approach_slope(MODEL, X, layer="1"),
     TypeError, r"deadspec\.approach_slope: layer '1' must be an nn\.Linear, got ReLU"),
    ("direction_order-t-str", lambda: deadspec.direction_order(
        MODEL, X, torch.ones(N_PARAMS), targets=Y, t="abc"), TypeError,
     r"deadspec\.direction_order: t must be a 1-D sequence, array or tensor of positive "
     r"numbers, got str"),
    ("classify_directions-t-list", lambda: deadspec.classify_directions(
        MODEL, X, targets=Y, t=[0.1, "a"]), TypeError,
     r"deadspec\.classify_directions: t must be a 1-D sequence, array or tensor"),
    ("TokenCrossEntropy-targets-none", lambda: deadspec.TokenCrossEntropy()(
        torch.ones(2, 3, 4), None), TypeError,
     r"deadspec\.TokenCrossEntropy: targets must be a torch\.Tensor, got NoneType"),
    ("TokenCrossEntropy-range", lambda: deadspec.TokenCrossEntropy()(
        torch.ones(2, 3, 4), torch.full((2, 3), 9)), ValueError,
     r"deadspec\.TokenCrossEntropy: targets must be token ids in \[0, 4\)"),
    ("direction_order-direction-str", lambda: deadspec.direction_order(MODEL, X, "d", targets=Y),
     TypeError, r"deadspec\.direction_order: direction must be a tensor, array or sequence of "
     r"real numbers .*got str"),
    ("direction_order-direction-none", lambda: deadspec.direction_order(MODEL, X, None,
                                                                        targets=Y),
     TypeError, r"deadspec\.direction_order: direction must be .*got NoneType"),
    ("direction_order-direction-entry", lambda: deadspec.direction_order(
        MODEL, X, {"0.weight": "a"}, targets=Y), TypeError,
     r"deadspec\.direction_order: direction\['0\.weight'\] must be a tensor, array or sequence"),
    ("direction_order-direction-length", lambda: deadspec.direction_order(
        MODEL, X, torch.ones(3), targets=Y), ValueError,
     rf"deadspec\.direction_order: a flat direction must be a 1-D vector of length {N_PARAMS}"),
    ("direction_order-targets-str", lambda: deadspec.direction_order(
        MODEL, X, torch.ones(N_PARAMS), targets="abc"), TypeError,
     r"deadspec\.direction_order: targets must be a torch\.Tensor, got str"),
    ("direction_order-targets-rows", lambda: deadspec.direction_order(
        MODEL, X, torch.ones(N_PARAMS), targets=Y[:5], labels="sampled"), ValueError,
     r"deadspec\.direction_order: targets must have the inputs' batch size 16 on axis 0, got "
     r"shape \(5,\)"),
    ("classify_directions-targets-str", lambda: deadspec.classify_directions(
        MODEL, X, targets="abc"), TypeError,
     r"deadspec\.classify_directions: targets must be a torch\.Tensor, got str"),
    ("classify_directions-targets-0d", lambda: deadspec.classify_directions(
        MODEL, X, targets=torch.tensor(1)), ValueError,
     r"deadspec\.classify_directions: targets must have the inputs' batch size 16 on axis 0, "
     r"got shape \(\)"),
    ("classify_directions-inputs", lambda: deadspec.classify_directions(MODEL, "x", targets=Y),
     TypeError, r"deadspec\.classify_directions: inputs must be a torch\.Tensor or a non-empty "
     r"tuple of tensors"),
    ("classify_directions-layers", lambda: deadspec.classify_directions(
        MODEL, X, targets=Y, layers=0), TypeError,
     r"deadspec\.classify_directions: layers must be a sequence of module names \(str\) or None, "
     r"got int"),
    ("classify_directions-slope_tol", lambda: deadspec.classify_directions(
        MODEL, X, targets=Y, slope_tol="a"), ValueError,
     r"deadspec\.classify_directions: slope_tol must be a finite non-negative number, got 'a'"),
    ("classify_directions-labels", lambda: deadspec.classify_directions(
        MODEL, X, targets=Y, labels="a"), ValueError,
     r"deadspec\.classify_directions: labels must be one of"),
    ("classify_directions-candidate", lambda: deadspec.classify_directions(
        MODEL, X, targets=Y, gauges=False, n_small=0, candidates={"mine": "b"}), TypeError,
     r"deadspec\.direction_order: direction must be a tensor"),
    ("gauge_directions-model", lambda: deadspec.gauge_directions("m"), TypeError,
     r"deadspec\.gauge_directions: model must be a torch\.nn\.Module, got str"),
    ("gauge_directions-logit_shift", lambda: deadspec.gauge_directions(MODEL, logit_shift="x"),
     TypeError, r"deadspec\.gauge_directions: logit_shift must be a bool, got str 'x'"),
    # -- monitor: everything a reading would refuse is refused at construction
    ("monitor-inputs", lambda: _monitor(inputs="x"), TypeError,
     r"deadspec\.DeadDirectionMonitor: inputs must be a torch\.Tensor or a non-empty tuple"),
    ("monitor-targets", lambda: _monitor(targets="y"), TypeError,
     r"deadspec\.DeadDirectionMonitor: targets must be a torch\.Tensor, got str"),
    ("monitor-targets-rows", lambda: _monitor(targets=Y[:5]), ValueError,
     r"deadspec\.DeadDirectionMonitor: targets must have the inputs' batch size 16 on axis 0"),
    ("monitor-loss_fn", lambda: _monitor(loss_fn="ce"), TypeError,
     r"deadspec\.DeadDirectionMonitor: loss_fn must be callable or None, got str"),
    ("monitor-labels", lambda: _monitor(labels="x"), ValueError,
     r"deadspec\.DeadDirectionMonitor: labels must be one of \('observed', 'sampled'\)"),
    ("monitor-batch_size", lambda: _monitor(batch_size="x"), ValueError,
     r"deadspec\.DeadDirectionMonitor: batch_size must be a positive int or None, got 'x'"),
    ("monitor-layers-int", lambda: _monitor(layers=0), TypeError,
     r"deadspec\.DeadDirectionMonitor: layers must be a module name \(str\), a sequence"),
    ("monitor-fisher", lambda: _monitor(fisher="no"), TypeError,
     r"deadspec\.DeadDirectionMonitor: fisher must be a bool, got str 'no'"),
    ("monitor-to_csv-what", lambda: _recorded().to_csv("r.csv", what="x"), ValueError,
     r"deadspec\.DeadDirectionMonitor\.to_csv: what must be 'records' or 'rates', got 'x'"),
    ("monitor-dead_directions", lambda: _recorded().dead_directions(0), ValueError,
     r"deadspec\.DeadDirectionMonitor: layer must be one of the monitored layers"),
    ("callback-inputs", lambda: DeadDirectionCallback(every=5, inputs="x"), TypeError,
     r"deadspec\.DeadDirectionCallback: inputs must be a torch\.Tensor"),
    ("callback-targets", lambda: DeadDirectionCallback(every=5, inputs=X, targets=[1]),
     TypeError, r"deadspec\.DeadDirectionCallback: targets must be a torch\.Tensor or None, "
     r"got list"),
    # -- gauges
    ("discover-inputs", lambda: G.discover(MODEL, check=True, inputs="x"), TypeError,
     r"deadspec\.discover: inputs must be a torch\.Tensor or a non-empty tuple of tensors"),
    ("discover-generator", lambda: G.discover(MODEL, generator="g"), TypeError,
     r"deadspec\.discover: generator must be a torch\.Generator or None, got str"),
    ("discover-check", lambda: G.discover(MODEL, check="yes", inputs=X), TypeError,
     r"deadspec\.discover: check must be a bool, got str 'yes'"),
    ("bind-gauges-str", lambda: G.bind("abc", MODEL), TypeError,
     r"deadspec\.bind: gauges must be a sequence of deadspec\.gauges\.Gauge objects, got str"),
    ("bind-model", lambda: G.bind([G.Pair("0", "2")], "m"), TypeError,
     r"deadspec\.bind: model must be an nn\.Module, got str"),
    ("Pair-bind-model", lambda: G.Pair("0", "2").bind("m"), TypeError,
     r"deadspec\.Pair: model must be an nn\.Module, got str"),
    ("Pair-units", lambda: G.bind([G.Pair("0", "2", units="a")], MODEL), TypeError,
     r"deadspec\.Pair: units must be integer indices or a bool mask, got str 'a'"),
    ("Pair-producer-relu", lambda: G.bind([G.Pair("1", "2")], MODEL), ValueError,
     r"deadspec\.Pair: producer must be an nn\.Linear, got ReLU '1'"),
    ("Pair-apply-element", lambda: G.Pair("0", "2").apply(MODEL, "a"), TypeError,
     r"deadspec\.Pair\.apply: element must be a positive vector of shape \(8,\) .*got str"),
    ("Pair-apply-negative", lambda: G.Pair("0", "2").apply(MODEL, -torch.ones(8)), ValueError,
     r"deadspec\.Pair\.apply: element must be a positive vector of shape \(8,\), got shape "
     r"\(8,\), smallest entry -1"),
    ("Pair-check-inputs", lambda: G.Pair("0", "2").check(MODEL, "x"), TypeError,
     r"deadspec\.Pair\.check: inputs must be a torch\.Tensor"),
    ("Pair-check-targets-str", lambda: G.Pair("0", "2").check(MODEL, X, "abc"), TypeError,
     r"deadspec\.Pair\.check: targets must be a torch\.Tensor or None, got str"),
    ("Pair-check-loss_fn", lambda: G.Pair("0", "2").check(MODEL, X, Y, "ce"), TypeError,
     r"deadspec\.Pair\.check: loss_fn must be callable or None, got str"),
    ("Pair-check-loss-per-sample", lambda: G.Pair("0", "2").check(
        MODEL, X, Y, nn.CrossEntropyLoss(reduction="none")), TypeError,
     r"deadspec\.Pair\.check: loss_fn must return a scalar .*got shape \(16,\)"),
    ("Pair-check-targets-rows", lambda: G.Pair("0", "2").check(MODEL, X, Y[:5]), ValueError,
     r"deadspec\.Pair\.check: integer targets \(the cross-entropy\) must hold one class index "
     r"per row of the output's last axis, got output \(16, 3\) and targets \(5,\)"),
    ("Pair-check-targets-range", lambda: G.Pair("0", "2").check(MODEL, X, Y + 3), ValueError,
     r"deadspec\.Pair\.check: integer targets must be class indices in \[0, 3\)"),
    ("Pair-check-targets-float", lambda: G.Pair("0", "2").check(MODEL, X, torch.ones(16, 2)),
     ValueError, r"deadspec\.Pair\.check: floating targets \(the MSE\) must have as many "
     r"entries as the output \(16, 3\), got shape \(16, 2\)"),
    ("Pair-check-targets-bool", lambda: G.Pair("0", "2").check(MODEL, X, Y > 0), TypeError,
     r"deadspec\.Pair\.check: targets must be integer or float, got torch\.bool"),
    ("Pair-check-generator", lambda: G.Pair("0", "2").check(MODEL, X, generator=1), TypeError,
     r"deadspec\.Pair\.check: generator must be a torch\.Generator or None, got int"),
    ("Pair-check-spread", lambda: G.Pair("0", "2").check(MODEL, X, spread="x"), TypeError,
     r"deadspec\.Pair\.check: spread must be a number, got str 'x'"),
    ("Pair-check-raise_on_fail", lambda: G.Pair("0", "2").check(MODEL, X, raise_on_fail="no"),
     TypeError, r"deadspec\.Pair\.check: raise_on_fail must be a bool, got str 'no'"),
    ("discover-check-targets", lambda: G.discover(MODEL, check=True, inputs=X, targets=Y[:3]),
     ValueError, r"deadspec\.Pair\.check: integer targets \(the cross-entropy\) must hold"),
    ("Pair-consumer-int", lambda: G.Pair("0", 3), TypeError,
     r"deadspec\.Pair: consumer must be a module name \(str\), an nn\.Module or a sequence of "
     r"them, got int"),
    ("Pair-producer-list", lambda: G.Pair(["0"], "2"), TypeError,
     r"deadspec\.Pair: producer must be a module name \(str\), an nn\.Module, got list"),
    ("NormScale-consumer-float", lambda: G.NormScale("0", 1.5), TypeError,
     r"deadspec\.NormScale: consumer must be a module name"),
    ("Chain-layers-str", lambda: G.Chain("abc"), TypeError,
     r"deadspec\.Chain: layers must be a sequence of module names or modules, got str"),
    ("random_elements-model", lambda: G.random_elements("m", [G.Pair("0", "2")]), TypeError,
     r"deadspec\.random_elements: model must be an nn\.Module, got str"),
    ("random_elements-gauges", lambda: G.random_elements(MODEL, "abc"), TypeError,
     r"deadspec\.random_elements: gauges must be a sequence of deadspec\.gauges\.Gauge"),
    ("random_elements-spread", lambda: G.random_elements(MODEL, [], spread="x"), TypeError,
     r"deadspec\.random_elements: spread must be a number, got str 'x'"),
    ("apply_elements-elements", lambda: G.apply_elements(MODEL, [G.Pair("0", "2")], 3),
     TypeError, r"deadspec\.apply_elements: elements must be a sequence .*got int"),
    ("summary-int", lambda: G.summary(3), TypeError,
     r"deadspec\.summary: gauges must be a sequence of deadspec\.gauges\.Gauge objects, got int"),
    ("summary-entries", lambda: G.summary([1]), TypeError,
     r"deadspec\.summary: gauges must hold deadspec\.gauges\.Gauge objects, got int"),
    # -- optimizers
    ("DDCAdam-str", lambda: optim.DDCAdam("m"), TypeError,
     r"deadspec\.DDCAdam: model_or_params must be an nn\.Module, or an iterable of parameters "
     r".*got str"),
    ("DDCAdam-int", lambda: optim.DDCAdam(3), TypeError,
     r"deadspec\.DDCAdam: model_or_params must be .*got int"),
    ("DDCAdam-empty", lambda: optim.DDCAdam([]), ValueError,
     r"deadspec\.DDCAdam: model_or_params must be .*got an empty iterable"),
    ("DDCAdam-entries", lambda: optim.DDCAdam(["a"]), TypeError,
     r"deadspec\.DDCAdam: model_or_params must be .*got an entry of type str"),
    ("DDCAdam-tensor", lambda: optim.DDCAdam(torch.zeros(3, requires_grad=True)), TypeError,
     r"deadspec\.DDCAdam: model_or_params must be .*got a bare Tensor \(pass \[tensor\]\)"),
    ("DDCAdam-params", lambda: optim.DDCAdam(MODEL, params="x"), TypeError,
     r"deadspec\.DDCAdam: params must be an iterable of parameters .*got str"),
    ("DDCAdam-betas", lambda: optim.DDCAdam(MODEL, betas="ab"), ValueError,
     r"deadspec\.DDCAdam: betas must be two floats in \[0, 1\), got 'ab'"),
    ("DDCAdam-eps", lambda: optim.DDCAdam(MODEL, eps="x"), ValueError,
     r"deadspec\.DDCAdam: eps must be a non-negative float, got 'x'"),
    ("DDCAdam-weight_decay", lambda: optim.DDCAdam(MODEL, weight_decay="x"), ValueError,
     r"deadspec\.DDCAdam: weight_decay must be a non-negative float, got 'x'"),
    ("DDCAdam-balance_rate", lambda: optim.DDCAdam(MODEL, balance_rate="x"), ValueError,
     r"deadspec\.DDCAdam: balance_rate must lie in \[0, 1\], got 'x'"),
    ("DDCMuon-str", lambda: optim.DDCMuon("m"), TypeError,
     r"deadspec\.DDCMuon: model_or_params must be an nn\.Module, or an iterable .*got str"),
    ("DDCMuon-head", lambda: optim.DDCMuon(MODEL, head=3), TypeError,
     r"deadspec\.DDCMuon: head must be 'auto', None, a module name or a sequence of them, "
     r"got int"),
    ("DDCMuon-ns_coefficients", lambda: optim.DDCMuon(MODEL, ns_coefficients=3), TypeError,
     r"deadspec\.DDCMuon: ns_coefficients must hold 3 floats \(a, b, c\), got int"),
    ("DDCMuon-ns_coefficients-inf", lambda: optim.DDCMuon(MODEL, ns_coefficients=(1, 2, 1e400)),
     ValueError, r"deadspec\.DDCMuon: ns_coefficients must hold 3 finite floats \(a, b, c\)"),
    ("DDCMuon-ns_eps-inf", lambda: optim.DDCMuon(MODEL, ns_eps=float("inf")), ValueError,
     r"deadspec\.DDCMuon: ns_eps must be a positive finite float, got inf"),
    ("DDCMuon-ns_coefficients-float32", lambda: _muon_step(ns_coefficients=(1e300, 1.0, 1.0)),
     ValueError, r"deadspec\.DDCMuon\.step: ns_coefficients and ns_eps must be representable "
     r"in the Newton–Schulz dtype float32"),
    ("DDCMuon-adamw_betas", lambda: optim.DDCMuon(MODEL, adamw_betas=5), ValueError,
     r"deadspec\.DDCMuon: adamw_betas must be two floats in \[0, 1\), got 5"),
    ("DDCMuon-weight_decay", lambda: optim.DDCMuon(MODEL, weight_decay="x"), ValueError,
     r"deadspec\.DDCMuon: weight_decay must be a non-negative float, got 'x'"),
    # -- llc
    ("llc.estimate-model", lambda: llc.estimate("m", (X, Y), loss_fn=CE, epsilon=1e-3,
                                                gamma=1.0), TypeError,
     r"deadspec\.llc\.estimate: model must be a torch\.nn\.Module, got str"),
    ("llc.estimate-targets-none", lambda: llc.estimate(MODEL, (X, None), loss_fn=CE,
                                                       epsilon=1e-3, gamma=1.0), TypeError,
     r"deadspec\.llc\.estimate: data's targets must be a tensor \(or an array of numbers\), got "
     r"NoneType"),
    ("llc.estimate-inputs-str", lambda: llc.estimate(MODEL, ("abc", Y), loss_fn=CE,
                                                     epsilon=1e-3, gamma=1.0), TypeError,
     r"deadspec\.llc\.estimate: data's inputs must be a tensor .*got str"),
    ("llc.calibrate-targets-ragged", lambda: llc.calibrate(MODEL, (X, [[1], [2, 3]]),
                                                           loss_fn=CE), TypeError,
     r"deadspec\.llc\.calibrate: data's targets must be a tensor .*got list"),
    ("llc.estimate-epsilon", lambda: llc.estimate(MODEL, (X, Y), loss_fn=CE, epsilon="a",
                                                  gamma=1.0), TypeError,
     r"deadspec\.llc\.estimate: epsilon must be a positive number, got str"),
    ("llc.estimate-chains", lambda: llc.estimate(MODEL, (X, Y), loss_fn=CE, epsilon=1e-3,
                                                 gamma=1.0, chains="a"), TypeError,
     r"deadspec\.llc\.estimate: chains must be a positive integer, got str"),
    ("llc.estimate-gamma", lambda: llc.estimate(MODEL, (X, Y), loss_fn=CE, epsilon=1e-3,
                                                gamma="x"), TypeError,
     r"deadspec\.llc\.estimate: gamma must be a number, got str 'x'"),
    ("llc.estimate-seed", lambda: llc.estimate(MODEL, (X, Y), loss_fn=CE, epsilon=1e-3,
                                               gamma=1.0, seed="x"), TypeError,
     r"deadspec\.llc\.estimate: seed must be an int or None, got str 'x'"),
    ("llc.estimate-loss-returns-str", lambda: llc.estimate(
        MODEL, (X, Y), loss_fn=lambda o, t: "a", epsilon=1e-3, gamma=1.0), TypeError,
     r"deadspec\.llc\.estimate: loss_fn must return a tensor, got str"),
    ("llc.calibrate-model", lambda: llc.calibrate("m", (X, Y), loss_fn=CE), TypeError,
     r"deadspec\.llc\.calibrate: model must be a torch\.nn\.Module, got str"),
    ("llc.calibrate-loss_fn", lambda: llc.calibrate(MODEL, (X, Y), loss_fn="ce"), TypeError,
     r"deadspec\.llc\.calibrate: loss_fn must be callable, got str"),
    ("llc.calibrate-epsilons", lambda: llc.calibrate(MODEL, (X, Y), loss_fn=CE, epsilons="a",
                                                     gammas=[1.0]), TypeError,
     r"deadspec\.llc\.calibrate: epsilons must be a sequence of numbers, got str"),
    ("llc.calibrate-gammas-entry", lambda: llc.calibrate(MODEL, (X, Y), loss_fn=CE,
                                                         epsilons=[1e-3], gammas=["a"]),
     TypeError, r"deadspec\.llc\.calibrate: gammas entries must be a number, got str 'a'"),
    ("llc.calibrate-plateau_rtol", lambda: llc.calibrate(MODEL, (X, Y), loss_fn=CE,
                                                         plateau_rtol="a"), TypeError,
     r"deadspec\.llc\.calibrate: plateau_rtol must be a number, got str 'a'"),
    ("llc.curvature_scale-model", lambda: llc.curvature_scale("m", (X, Y), loss_fn=CE),
     TypeError, r"deadspec\.llc\.curvature_scale: model must be a torch\.nn\.Module, got str"),
    ("llc.curvature_scale-iters", lambda: llc.curvature_scale(MODEL, (X, Y), loss_fn=CE,
                                                              iters="a"), TypeError,
     r"deadspec\.llc\.curvature_scale: iters must be an int, got str 'a'"),
    ("llc.default_nbeta", lambda: llc.default_nbeta("a"), ValueError,
     r"deadspec\.llc\.default_nbeta: n must be an integer >= 2, got 'a'"),
    ("llc.gaussian_nll", lambda: llc.gaussian_nll("a"), TypeError,
     r"deadspec\.llc\.gaussian_nll: sigma must be a number, got str 'a'"),
    ("llc.gaussian_nll-shapes", lambda: llc.gaussian_nll(1.0)(torch.ones(5, 2), torch.ones(5)),
     ValueError, r"deadspec\.llc\.gaussian_nll: targets must hold one value per output entry, "
     r"with the output's batch size, got output \(5, 2\) and targets \(5,\)"),
    ("llc.estimate-gaussian-shapes", lambda: llc.estimate(
        MODEL, (X, torch.randn(16, 2)), loss_fn=llc.gaussian_nll(1.0), epsilon=1e-3, gamma=1.0,
        chains=2, draws=1, burnin=0), ValueError,
     r"deadspec\.llc\.gaussian_nll: targets must hold one value per output entry"),
    ("llc.cross_entropy_nll-rows", lambda: llc.cross_entropy_nll(torch.ones(2, 3), Y),
     ValueError, r"deadspec\.llc\.cross_entropy_nll: output must be logits B×C \(or B×T×C\) "
     r"and targets one class index per row \(B or B×T\), got output \(2, 3\) and targets "
     r"\(16,\)"),
    ("llc.cross_entropy_nll-range", lambda: llc.cross_entropy_nll(
        torch.ones(2, 3), torch.tensor([0.0, 1e300], dtype=torch.float64)), ValueError,
     r"deadspec\.llc\.cross_entropy_nll: targets must be class indices in \[0, 3\)"),
    ("llc.cross_entropy_nll", lambda: llc.cross_entropy_nll("a", Y), TypeError,
     r"deadspec\.llc\.cross_entropy_nll: output must be a torch\.Tensor, got str"),
]


@pytest.mark.parametrize(
    ("call", "kind", "match"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_wrong_argument_gives_a_clear_error(call, kind, match):
    with pytest.raises(Exception) as info:  # noqa: B017 - the type is asserted exactly below
        call()
    message = str(info.value)
    assert type(info.value) is kind, f"{type(info.value).__name__}: {message}"
    assert re.search(match, message), message
    assert message.startswith("deadspec."), message
    assert "incompatible function arguments" not in message


def test_case_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))


# ---------------------------------------------------------------------------------------- CLI
@pytest.fixture()
def files(tmp_path):
    torch.manual_seed(0)
    ckpt = tmp_path / "step_3.pt"
    torch.save(MODEL.state_dict(), ckpt)
    data = tmp_path / "data.pt"
    torch.save({"inputs": X, "targets": Y}, data)
    wide = tmp_path / "wide.pt"  # 5 input features for a model that takes 4
    torch.save({"inputs": torch.randn(16, 5), "targets": Y}, wide)
    factory = tmp_path / "models.py"
    factory.write_text(
        "from torch import nn\n\n\ndef make():\n"
        "    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))\n"
    )
    return {"ckpt": ckpt, "data": data, "wide": wide, "factory": factory, "dir": tmp_path}


def _cli_error(capsys, argv) -> str:
    rc = cli.main(argv)
    captured = capsys.readouterr()
    assert rc == 2, captured.err
    lines = captured.err.strip().splitlines()
    assert lines and lines[0].startswith("deadspec: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return captured.err


def _read(files, data=None, model=None, out=None):
    return [
        "read",
        str(files["ckpt"]),
        "--model",
        model or f"{files['factory']}:make",
        "--data",
        str(data or files["data"]),
        "--out",
        str(out or files["dir"] / "r.csv"),
        "--no-progress",
    ]


def test_cli_forward_failure_is_an_error_not_a_traceback(capsys, files):
    err = _cli_error(capsys, _read(files, data=files["wide"]))
    assert "in the model's forward or loss: RuntimeError: mat1 and mat2 shapes" in err
    assert "check that --data matches the model built by --model" in err


def test_cli_targets_out_of_range_is_an_error(capsys, files):
    bad = files["dir"] / "bad.pt"
    torch.save({"inputs": X, "targets": torch.full((16,), 9)}, bad)
    err = _cli_error(capsys, _read(files, data=bad))
    assert "integer targets must be class indices in [0, 3)" in err


def test_cli_factory_file_that_fails_to_import(capsys, files):
    broken = files["dir"] / "broken.py"
    broken.write_text("import no_such_module_for_deadspec_tests\n")
    err = _cli_error(capsys, _read(files, model=f"{broken}:make"))
    assert "importing" in err and "ModuleNotFoundError" in err


def test_cli_dotted_factory_module_that_raises_at_import(capsys, files, monkeypatch):
    name = "deadspec_test_raising_module"
    (files["dir"] / f"{name}.py").write_text("x = 1 / 0\n")
    monkeypatch.chdir(files["dir"])
    monkeypatch.delitem(sys.modules, name, raising=False)
    err = _cli_error(capsys, _read(files, model=f"{name}:make"))
    assert f"--model: importing module '{name}' failed: ZeroDivisionError" in err


def test_cli_factory_that_returns_no_module(capsys, files):
    err = _cli_error(capsys, _read(files, model="deadspec.models:DEMO_WIDTHS"))
    assert "is not callable" in err


def test_cli_unwritable_output(capsys, files):
    err = _cli_error(capsys, _read(files, out=files["data"] / "r.csv"))
    assert "--out must be in a folder that can be written" in err


def test_cli_bad_batch_size(capsys, files):
    err = _cli_error(capsys, [*_read(files), "--batch-size", "0"])
    assert "--batch-size must be a positive integer, got 0" in err


def test_cli_data_file_of_the_wrong_kind(capsys, files):
    bad = files["dir"] / "data.npz"
    np.savez(bad, x=np.ones(3))
    err = _cli_error(capsys, _read(files, data=bad))
    assert "has no array 'inputs'" in err


def test_cli_demo_into_a_file(capsys, files):
    err = _cli_error(capsys, ["demo", "--out", str(files["data"]), "--no-progress"])
    assert "demo: --out must be a folder, got the file" in err


def test_cli_helpers_refuse_a_wrong_path_type():
    with pytest.raises(cli.CLIError, match=r"--data must be a path \(str or os.PathLike\), got"):
        cli.load_data(3)
    with pytest.raises(cli.CLIError, match=r"checkpoints must be a sequence of paths, got the"):
        cli.read_checkpoints("step_1.pt", "deadspec.models:demo_mlp", X)


# ------------------------------------------------------------- the model's own errors, noted
WIDE = torch.randn(16, 5)  # 5 features for MODEL, which takes 4
_MATMUL = r"mat1 and mat2 shapes cannot be multiplied"


def _raising_loss(output, targets):
    raise KeyError("the user's loss failed")


# (id, call, the model's exception type, its message, the note deadspec adds)
USER_ERRORS = [
    ("read", lambda: deadspec.read(MODEL, WIDE, fisher=False), RuntimeError, _MATMUL,
     "deadspec.read: raised by the model's forward on batch 0 of the inputs (rows 0:16)"),
    ("read-fisher-batches", lambda: deadspec.read(MODEL, WIDE, targets=Y, batch_size=8),
     RuntimeError, _MATMUL,
     "deadspec.read: raised by the model's forward on batch 0 of the inputs (rows 0:8)"),
    ("read-loss_fn", lambda: deadspec.read(MODEL, X, targets=Y, loss_fn=_raising_loss),
     KeyError, "the user's loss failed", "deadspec.read: raised by loss_fn(output, targets)"),
    ("approach_slope", lambda: deadspec.approach_slope(MODEL, WIDE, layer="0", units=[0]),
     RuntimeError, _MATMUL, "deadspec.approach_slope: raised by the model's forward on batch 0"),
    ("monitor", lambda: _monitor(inputs=WIDE, fisher=False).step(0), RuntimeError, _MATMUL,
     "deadspec.DeadDirectionMonitor: raised by the model's forward on batch 0 of the inputs"),
    ("direction_order", lambda: deadspec.direction_order(MODEL, WIDE, torch.ones(N_PARAMS),
                                                         targets=Y),
     RuntimeError, _MATMUL,
     "deadspec.direction_order: raised by the model's forward on batch 0 of the inputs"),
    ("direction_order-path", lambda: deadspec.direction_order(
        MODEL, X, torch.ones(N_PARAMS), targets=Y, path=lambda t: {}[t]),
     KeyError, "0.001", "deadspec.direction_order: raised by path(t) at t=0.001"),
    ("discover-check", lambda: G.discover(MODEL, check=True, inputs=WIDE), RuntimeError,
     _MATMUL, "deadspec.Pair.check: raised by the model's forward on the inputs (a float64 "
     "copy of the model)"),
    ("Pair-check", lambda: G.Pair("0", "2").check(MODEL, WIDE), RuntimeError, _MATMUL,
     "deadspec.Pair.check: raised by the model's forward on the inputs"),
    ("Pair-check-loss_fn", lambda: G.Pair("0", "2").check(MODEL, X, Y, _raising_loss),
     KeyError, "the user's loss failed", "deadspec.Pair.check: raised by loss_fn(outputs, "
     "targets)"),
    ("llc.estimate", lambda: llc.estimate(MODEL, (WIDE, Y), loss_fn=CE, epsilon=1e-3,
                                          gamma=1.0, chains=1, draws=2, burnin=0),
     RuntimeError, _MATMUL, "deadspec.llc.estimate: raised by the model's forward on rows 0:16 "
     "of the data, at w*"),
    ("llc.curvature_scale", lambda: llc.curvature_scale(MODEL, (WIDE, Y), loss_fn=CE),
     RuntimeError, _MATMUL, "deadspec.llc.curvature_scale: raised by the model's forward"),
]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="BaseException.add_note is Python 3.11+")
@pytest.mark.parametrize(
    ("call", "kind", "match", "note"), [c[1:] for c in USER_ERRORS],
    ids=[c[0] for c in USER_ERRORS],
)
def test_the_models_own_error_passes_with_a_note(call, kind, match, note):
    """An exception raised by the user's model (or loss_fn, or path) is theirs: its type and
    message pass unchanged, and one note says which deadspec function ran it and on what."""
    with pytest.raises(Exception) as info:  # noqa: B017 - the type is asserted exactly below
        call()
    exc = info.value
    assert type(exc) is kind, f"{type(exc).__name__}: {exc}"
    assert re.search(match, str(exc)) and not str(exc).startswith("deadspec."), str(exc)
    notes = [n for n in getattr(exc, "__notes__", []) if n.startswith("deadspec.")]
    assert len(notes) == 1 and notes[0].startswith(note), notes


def test_a_deadspec_error_inside_the_users_code_gets_no_note():
    """What deadspec itself raises below the call (a hook, a deadspec loss) is not the user's:
    no note; nor is an error whose message is already deadspec's."""
    from deadspec._engine.inputs import names_list
    from deadspec._usercode import user_code

    with pytest.raises(AttributeError) as info, user_code("read", "the model's forward"):
        names_list(None)  # an AttributeError raised in a frame of the deadspec package
    assert not getattr(info.value, "__notes__", [])
    with pytest.raises(ValueError) as info, user_code("read", "the model's forward"):
        raise ValueError("deadspec.read: x must be finite")
    assert not getattr(info.value, "__notes__", [])
    with pytest.raises(ValueError) as info, user_code("read", "the model's forward"):
        raise ValueError("the user's own error")
    assert info.value.__notes__ == ["deadspec.read: raised by the model's forward"]
