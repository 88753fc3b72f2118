"""Explicit inputs run before the generated ones, in every size (hypothesis's ``@example``).

Each pins one finding of the suite, so a run of any size shows it (and shows it fixed), and
the CI-size run covers every known outcome class whatever hypothesis draws. Most are the
shortest inputs the generated runs found for that finding (``python
tests/python/fuzz/runner.py --size medium``); the rest are the problems named in issue #12.
They must stay valid inputs: when a finding is fixed its example turns into an ``ok`` or a
``clean_error`` and stays as a regression input.
"""

from __future__ import annotations

from fuzz.specs import Arr, Capsule, Case, Direction, File, Layer, Loss, Model, Obj

_MLP = Model("mlp", widths=(3, 4, 2), dead=(0,))
_X = Arr("torch", "float64", (8, 3))
_Y = Arr("torch", "int64", (8,), fill="int", scale=2.0)
_FILES = {
    "factory": File("factory", widths=(3, 2), suffix=".py"),
    "data": File("data_pt", widths=(4, 3, 2), suffix=".pt"),
    "ckpt0": File("ckpt", widths=(3, 2), suffix=".pt"),
}
_READ = ("read", "{ckpt0}", "--model", "{factory}:make", "--data", "{data}")


def _F64(*shape: int, **kw: object) -> Arr:
    return Arr("numpy", "float64", shape, **kw)


_BLOCK32 = {"param": Arr("torch", "float32", (3,)),
            "grad": Arr("torch", "float32", (3,), scale=1e30),
            "exp_avg": Arr("torch", "float32", (3,), fill="zeros"),
            "exp_avg_sq": Arr("torch", "float32", (3,), fill="zeros"),
            "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "step": 1}
_BLOCK64 = {"param": _F64(2, 3), "grad": _F64(2, 3), "exp_avg": _F64(2, 3, fill="zeros"),
            "exp_avg_sq": _F64(2, 3, fill="zeros"),
            "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "step": 1}

EXAMPLES: dict[str, tuple[Case, ...]] = {
    # -- public ops --------------------------------------------------------------------------
    "gram": (Case("gram", (_F64(2, 2),), {"center": "yes"}),),  # unclear: pybind11
    "fisher_gram": (Case("fisher_gram", (_F64(2, 2), _F64(2, 2)), {"bias": "yes"}),),  # idem
    "sym_eig": (
        # non-finite: the largest eigenvalue of a finite matrix exceeds float64
        Case("sym_eig", (_F64(2, 2, fill="ones", scale=1.7e308),), {"vectors": True}),
        Case("sym_eig", (_F64(2, 2, fill="sym"),), {"vectors": "yes"}),  # unclear: pybind11
    ),
    "spectrum": (
        # non-finite: participation_ratio NaN when Σμ² overflows (1e300) or underflows
        Case("spectrum", (_F64(4, 4, fill="psd", scale=1e300),)),
        Case("spectrum", (_F64(3, 3, fill="psd", scale=1e-310),)),
        Case("spectrum", (_F64(2, 2, fill="psd"),), {"vectors": "yes"}),  # unclear: pybind11
    ),
    "spectrum_from_eigenvalues": (
        Case("spectrum_from_eigenvalues", (_F64(2, fill="desc", scale=1e300),)),  # non-finite
        Case("spectrum_from_eigenvalues", (Obj("tensor_cuda"),)),  # unclear: a meta tensor
    ),
    "logdet_top": (
        Case("logdet_top", (Obj("object"), 1)),  # unclear: numpy's float()
        Case("logdet_top", ([1.0, 0.5], 2**64)),  # unclear: k beyond int64 reached pybind11
    ),
    "fit_slope": (
        # non-finite: r2 NaN, stderr Inf when Σ(y - ȳ)² overflows
        Case("fit_slope", ([0.0, 1.0, 2.0], [0.0, 1e308, -1e308])),
        Case("fit_slope", ("", [0.0, 1.0])),  # unclear: numpy's float()
    ),
    "GramAccumulator": (
        Case("GramAccumulator", (None,), {}, (("gram", False),)),  # unclear: int(None)
        Case("GramAccumulator", (2**40,), {}, (("gram", False),)),  # unclear: std::bad_alloc
    ),
    "misc": (
        Case("misc", ("set_num_threads", None)),  # unclear: int(None)
        # unclear: ints beyond the core's int64 / int reached pybind11
        Case("misc", ("fisher_route", 3, 2**64, 3, 2)),
        Case("misc", ("set_num_threads", 2**31)),
        Case("misc", ("set_num_threads", -(2**62))),
        Case("misc", ("default_rtol", "float16", 2**64)),
    ),
    # -- model-level entry points ------------------------------------------------------------
    "read": (
        # non-finite: participation_ratio NaN of the Fisher-Gram of 1e100-scale residuals
        Case("read", (Model("mlp", widths=(2, 4, 4, 5), bias=False, seed=1),
                      Arr("torch", "float64", (2, 2), seed=1)),
             {"targets": Arr("torch", "float64", (2, 5), scale=1e100, seed=5)}),
        # was unclear: inputs of another dtype than the model; torch's error from the forward
        # (now model_error: passed on with deadspec's note)
        Case("read", (Model("mlp", widths=(3, 2), dtype="float32"),
                      Arr("torch", "bfloat16", (4, 3))), {"fisher": False}),
    ),
    "approach_slope": (
        # was unclear: the model's forward fails on the inputs (now model_error, noted)
        Case("approach_slope", (Model("mlp", widths=(3, 5, 1)), Arr("torch", "float64", (6,))),
             {"layer": "0", "units": [0]}),
    ),
    "direction_order": (
        # non-finite: k̂ = 1 + slope/2 = 0 on a sampled-label Fisher, so λ_dir = 1/(2k̂) = Inf
        Case("direction_order", (Model("transformer", widths=(2, 2, 2), dead=(0,),
                                       layernorm=True),
                                 Arr("torch", "int64", (12, 3), fill="int", scale=3.0),
                                 Direction(form="dict", seed=2)),
             {"targets": Arr("torch", "int64", (12,), fill="int", scale=2.0, seed=1),
              "method": "ols", "seed": 0, "labels": "sampled", "batch_size": 2,
              "n_probes": 1}),
        # hang: n_probes=2**31 random probes, no bound
        Case("direction_order", (_MLP, _X, Direction()), {"targets": _Y, "n_probes": 2**31}),
        # unclear: targets="abc" reaches infer_task (AttributeError)
        Case("direction_order", (_MLP, _X, Direction()), {"targets": "abc"}),
        # unclear: t="abc" reached numpy's float conversion (ValueError)
        Case("direction_order", (_MLP, _X, Direction()), {"targets": _Y, "t": "abc"}),
    ),
    "classify_directions": (
        # non-finite: λ_dir Inf for an eigen-Fisher direction
        Case("classify_directions", (Model("mlp_ln", widths=(3, 4, 4), act="linear", seed=4,
                                           dead=(2, 2)),
                                     Arr("torch", "float64", (12, 3), layout="T")),
             {"targets": Arr("torch", "float64", (12, 4), seed=6), "gauges": True}),
        Case("classify_directions", (_MLP, _X), {"targets": "abc"}),  # unclear: as above
        # unclear (long run): seed=2**64 reached torch's manual_seed (now refused by range)
        Case("classify_directions", (_MLP, _X), {"targets": _Y, "seed": 2**64}),
        # unclear: a user candidate given as a flat vector ('Tensor' has no attribute 'items')
        Case("classify_directions", (_MLP, _X), {"targets": _Y, "gauges": False, "n_small": 0,
                                                  "candidates": {"v": Direction()}}),
    ),
    "gauge_directions": (
        # unclear: a model that is not a module (AttributeError named_modules)
        Case("gauge_directions", (Obj("object"),), {"output_layer": "x"}),
    ),
    "gauges.discover": (
        # was unclear: check=True with inputs="" reached the model's forward (now refused)
        Case("gauges.discover", (Model("mlp", widths=(2, 2)),), {"check": True, "inputs": ""}),
    ),
    "gauges.check": (
        # non-finite (long run): a model of 1e300 weights, outputs beyond float64 (rel NaN);
        # now refused: the outputs must be finite to be compared
        Case("gauges.check", (Model("mlp", widths=(4, 3, 4, 2), init_scale=1e+300, dead=(3, 3)),
                              Arr("torch", "float64", (4, 4))),
             {"targets": None, "loss_fn": None, "rtol": 1e-10, "raise_on_fail": False},
             (("discovered", 2),)),
        # unclear: a declared Pair's consumer given as an int ('int' object is not iterable)
        Case("gauges.check", (Model("mlp", widths=(2, 3, 1)), Arr("torch", "float64", (4, 2))),
             {}, (("declared", "Pair", Layer(0, linear_only=True), 3),)),
        # unclear: TokenCrossEntropy called with targets=None (AttributeError 'shape')
        Case("gauges.check", (Model("mlp", widths=(1, 1, 4), act="linear", seed=6),
                              Arr("torch", "float64", (40, 1))),
             {"targets": None, "loss_fn": Loss("token_ce")}, (("discovered", 2),)),
        # was unclear: non-tensor targets reached torch's loss (now refused)
        Case("gauges.check", (Model("mlp", widths=(2, 3, 1)), Arr("torch", "float64", (4, 2))),
             {"targets": "abc", "loss_fn": Loss("l1")},
             (("declared", "Pair", Layer(0, linear_only=True), Layer(1, linear_only=True)),)),
    ),
    "optim.DDCAdam": (
        # non-finite: finite 1e30 float32 gradients write Inf into exp_avg_sq
        Case("optim.DDCAdam", (Model("mlp", widths=(2, 3, 2), dtype="float32"),), {},
             (("grad", None, 1e30, 0, ()),)),
        # non-finite: eps=0 with a zero gradient writes 0/0 = NaN into the parameters
        Case("optim.DDCAdam", (Model("mlp", widths=(2, 3, 2)),), {"eps": 0.0},
             (("grad", None, 0.0, 0, ()),)),
    ),
    "optim.DDCMuon": (
        # unclear (long run): lr 1e130 beyond a float32 parameter (torch's "value cannot be
        # converted" part-way through the step); now refused before anything is written
        Case("optim.DDCMuon", (Model("rrr", widths=(4, 1, 2), act="linear", dtype="float32",
                                     seed=6, dead=(2,)),),
             {"lr": 9.595114924592554e+129, "ns_eps": 5.963599086481597e+16,
              "ns_dtype": Obj("dtype_float32"), "maximize": True, "adamw_lr": 1e-3,
              "gauge_mode": "damped"},
             (("grad", None, 0.0, 1, ()),)),
        # hang: ns_steps=2**64 Newton–Schulz steps, no bound
        Case("optim.DDCMuon", (Model("mlp", widths=(2, 3, 2)),), {"ns_steps": 2**64},
             (("grad", None, 1.0, 0, ()),)),
        # unclear: coefficients beyond float32, torch's "value cannot be converted"
        Case("optim.DDCMuon", (Model("mlp", widths=(2, 3, 2), dtype="float32"),),
             {"ns_coefficients": (1e300, 1e300, 1e300)}, (("grad", None, 1.0, 0, ()),)),
        # unclear: lr·wd beyond float32 in the decay (torch's conversion error, or Inf written)
        Case("optim.DDCMuon", (Model("mlp_ln", widths=(1, 3, 4), act="linear", dtype="float32",
                                     seed=3, dead=(1, 3)),),
             {"weight_decay": 1.3446735362488813e118}, (("grad", None, 1e-300, 1, ()),)),
        # non-finite: finite 1e20 float32 gradients write Inf into the AdamW exp_avg_sq
        Case("optim.DDCMuon", (Model("mlp", widths=(2, 3, 2), dtype="float32"),), {},
             (("grad", None, 1e20, 0, ()),)),
    ),
    "llc.estimate": (
        # non-finite (long run): per-chain estimates near 1e300, their std overflowed; now the
        # std of the scaled estimates
        Case("llc.estimate", (Model("rrr", widths=(1, 3, 2), act="gelu", bias=False, seed=6),
                              (Arr("torch", "float64", (4, 1), scale=1e+150, seed=3, layout="T"),
                               Arr("torch", "float64", (4, 2), scale=1e+150, seed=3))),
             {"batch_size": 1, "loss_fn": Loss("gauss", sigma=0.001), "epsilon": 0.0001,
              "gamma": 0.0, "chains": 3, "draws": 1, "burnin": 0, "warn": False,
              "progress": False}),
        # hang: chains=10**6, no bound
        Case("llc.estimate", (Model("mlp", widths=(2, 1)),
                              (Arr("torch", "float64", (4, 2)), Arr("torch", "float64", (4, 1)))),
             {"loss_fn": Loss("gauss"), "epsilon": 1e-4, "gamma": 1.0, "chains": 10**6,
              "draws": 2, "burnin": 0, "warn": False, "progress": False}),
        # unclear: deadspec's own losses: gaussian_nll on targets of another width (torch's
        # broadcast error), cross_entropy_nll on float targets of 1e300 (an index out of bounds)
        Case("llc.estimate", (Model("rrr", widths=(4, 1, 2), bias=False, dtype="float32", seed=5),
                              (Arr("torch", "float32", (5, 4), scale=1e-3, seed=4),
                               Arr("torch", "int64", (5,), fill="int", scale=2.0, seed=3))),
             {"loss_fn": Loss("gauss"), "epsilon": 1e-4, "gamma": 0.0, "chains": 2, "draws": 1,
              "burnin": 0, "warn": False, "progress": False}),
        Case("llc.estimate", (Model("mlp", widths=(4, 1), act="gelu", bias=False, seed=2),
                              (Arr("torch", "float32", (2, 4), seed=2),
                               Arr("torch", "float64", (2, 1), scale=1e300))),
             {"loss_fn": Loss("ce_nll"), "epsilon": 1e-4, "gamma": 1.0, "chains": 2, "draws": 1,
              "burnin": 0, "warn": False, "progress": False}),
        # unclear: targets None ("Could not infer dtype of NoneType")
        Case("llc.estimate", (Model("mlp", widths=(1, 1)), (Arr("torch", "float64", (4, 1)), None)),
             {"loss_fn": Loss("gauss"), "epsilon": 1e-4, "gamma": 1.0, "chains": 1, "draws": 1,
              "burnin": 0, "warn": False, "progress": False}),
    ),
    "monitor.DeadDirectionMonitor": (
        # non-finite: records' participation_ratio NaN (1e100 inputs, via read)
        Case("monitor.DeadDirectionMonitor", (Model("mlp_ln", widths=(4, 2, 3), seed=1),),
             {"layers": None, "every": 1, "inputs": Arr("torch", "float64", (2, 4), scale=1e100),
              "targets": Arr("torch", "float64", (2, 3), scale=1e-160, seed=2)},
             (("step", 1, True), ("records",))),
        # was unclear: inputs of the wrong width (now model_error, noted)
        Case("monitor.DeadDirectionMonitor", (Model("mlp", widths=(3, 4, 2)),),
             {"inputs": Arr("torch", "float64", (4, 5)), "fisher": False}, (("step", 0, False),)),
    ),
    # -- command line: data loss, tracebacks -------------------------------------------------
    "cli.main": (
        Case("cli.main", _READ + ("--out", "{data}"), {"files": _FILES}),  # overwrite
        Case("cli.main", _READ + ("--out", "{ckpt0}"), {"files": _FILES}),  # overwrite
        # unclear: --plot with a .pt suffix, matplotlib's ValueError escapes main
        Case("cli.main", _READ + ("--out", "{new:out.csv}", "--plot", "{ckpt0}"),
             {"files": _FILES}),
    ),
    # -- bindings (the "unclear" ones: pybind11's argument TypeError, a clean error for _core.*
    # entries since the private binding's own argument errors were accepted) -----------------
    "_core.gram": (Case("_core.gram", (Capsule(_F64(2, 2)),), {"side": None}),),  # unclear
    "_core.sym_eig": (
        Case("_core.sym_eig", (Capsule(_F64(2, 2, fill="ones", scale=1.7e308)),)),  # non-finite
        Case("_core.sym_eig", (Capsule(_F64(2, 2, fill="sym")),), {"vectors": "yes"}),  # unclear
    ),
    "_core.spectrum": (
        Case("_core.spectrum", (Capsule(_F64(4, 4, fill="psd", scale=1e300)),)),  # non-finite
        Case("_core.spectrum", (Capsule(_F64(2, 2, fill="psd")),), {"input_dtype": 3}),  # unclear
    ),
    "_core.spectrum_from_eigenvalues": (
        Case("_core.spectrum_from_eigenvalues", (_F64(2, fill="desc", scale=1e300),)),
        Case("_core.spectrum_from_eigenvalues", ("abc",)),  # unclear
    ),
    "_core.fit_slope": (
        Case("_core.fit_slope", ([0.0, 1.0, 2.0], [0.0, 1e308, -1e308])),  # non-finite
        Case("_core.fit_slope", ("", [0.0, 1.0])),  # unclear
    ),
    "_core.fisher_route": (Case("_core.fisher_route", (6, 6, 6, 6, None)),),  # unclear
    "_core.fisher_gram_cost": (Case("_core.fisher_gram_cost", (2**64, 1, 1, 1)),),  # unclear
    "_core.resolve_gram_side": (Case("_core.resolve_gram_side", (2, 2**64, "auto")),),  # idem
    "_core.default_rtol": (Case("_core.default_rtol", (3, 1)),),  # unclear
    "_core.logdet_top": (Case("_core.logdet_top", ("abc", 1)),),  # unclear
    "_core.noargs": (Case("_core.noargs", ("num_threads", None)),),  # unclear
    "_core.GramAccumulator": (
        Case("_core.GramAccumulator", (2,), {}, (("merge_obj", None),)),
        # pybind11's "incompatible constructor arguments" (clean for a _core.* entry)
        Case("_core.GramAccumulator", (None,), {}, (("count",),)),
    ),
    "_core.ddc_adam_update": (
        # non-finite: g² of a 1e30 float32 gradient overflows into exp_avg_sq
        Case("_core.ddc_adam_update", (Arr("torch", "float32", (2, 2)),
                                       Arr("torch", "float32", (2, 2), scale=1e30),
                                       Arr("torch", "float32", (2, 2), fill="zeros"),
                                       Arr("torch", "float32", (2, 2), fill="zeros"), None),
             {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "step": 1}),
        Case("_core.ddc_adam_update", (_F64(2), _F64(2), _F64(2), _F64(2), None),
             {"lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "step": 1.0}),  # unclear
    ),
    "_core.ddc_adam_update_many": (
        Case("_core.ddc_adam_update_many", ([_BLOCK32],)),  # non-finite: as above
        Case("_core.ddc_adam_update_many", ("",)),  # unclear
    ),
    "_core.ddc_split_sums": (
        # non-finite: Σ x̃² per row of finite 1e300 parameters
        # (now +inf, documented: the exact sums exceed float64)
        Case("_core.ddc_split_sums", ([{**_BLOCK64, "param": _F64(2, 3, scale=1e300)}],)),
        Case("_core.ddc_split_sums", (None,)),  # unclear
        # non-finite (long run): column sums of 1e300 moments' centring and 1e100 gradients
        Case("_core.ddc_split_sums", ([{
            "param": Arr("torch", "float64", (2, 3), scale=1e-160, seed=6),
            "grad": Arr("torch", "float64", (2, 3), scale=1e+100, seed=6),
            "exp_avg": Arr("torch", "float64", (2, 3), scale=1e+300, seed=2),
            "exp_avg_sq": Arr("torch", "float64", (2, 3), fill="zeros", scale=0.0, seed=7),
            "lr": 0.0, "beta1": 0.0, "beta2": 0.0, "eps": 1e-08, "step": 2,
            "col_mean": Arr("numpy", "float64", (3,), scale=1e+300, seed=7),
            "row_coef": Arr("torch", "float64", (2,), scale=1e+300),
            "col_norm": Arr("numpy", "float64", (3,), scale=2.0, seed=2)}],)),
        # non-finite: a float32 row scale of 1e-300 reads as 0, x̃ = x/0 (now refused)
        Case("_core.ddc_split_sums", ([{**_BLOCK32, "param": Arr("torch", "float32", (4, 1)),
                                        "grad": Arr("torch", "float32", (4, 1)),
                                        "exp_avg": Arr("torch", "float32", (4, 1)),
                                        "exp_avg_sq": Arr("torch", "float32", (4, 1),
                                                          fill="zeros"),
                                        "row_scale": Arr("torch", "float32", (4,),
                                                         scale=1e-300)}],)),
    ),
    "_core.ddc_split_moments": (
        Case("_core.ddc_split_moments", ([_BLOCK32],)),  # non-finite: g² into exp_avg_sq
        # non-finite (long run): Σ u·P x̃ of 1e300 parameters and moments (inf − inf); now
        # summed scaled
        Case("_core.ddc_split_moments", ([{
            "param": Arr("torch", "float64", (4, 3), scale=1e300, seed=4),
            "grad": Arr("torch", "float64", (4, 3), scale=1e-160, seed=3),
            "exp_avg": Arr("numpy", "float64", (4, 3), scale=1e300, seed=3),
            "exp_avg_sq": Arr("torch", "float64", (4, 3), fill="uniform", seed=2),
            "lr": 0.1, "beta1": 0.9, "beta2": 0.999, "eps": 1e-300, "step": 1000000,
            "col_mean": Arr("torch", "float64", (3,)),
            "col_coef": Arr("torch", "float64", (3,), seed=2),
            "col_norm": Arr("torch", "float64", (3,), seed=6)}],)),
        Case("_core.ddc_split_moments", (None,)),  # unclear
    ),
    "_core.ddc_split_apply": (
        # non-finite: a 1e30 float32 gradient with a zero row scale (1e-300 in float32)
        Case("_core.ddc_split_apply", ([{
            "param": Arr("torch", "float32", (5,), seed=4),
            "grad": Arr("numpy", "float32", (5,), scale=1e30, seed=4),
            "exp_avg": Arr("numpy", "float32", (5,), seed=3),
            "exp_avg_sq": Arr("torch", "float32", (5,), fill="zeros", seed=2),
            "lr": 0.001, "beta1": 0.0, "beta2": 0.999, "eps": 1e-08, "step": 2,
            "row_scale": Arr("torch", "float32", (5,), scale=1e-300, seed=3),
            "row_coef": Arr("torch", "float32", (5,), scale=1e-300, seed=2)}],)),
        Case("_core.ddc_split_apply", (None,)),  # unclear
    ),
    "_core.ddc_row_norms": (
        # non-finite: √Σw² of finite 1e307 weights overflows (no scaling; now rescaled)
        Case("_core.ddc_row_norms", (_F64(2, 3, scale=1e307), None, None, 1.0, 1.0)),
        # +inf where the norm itself exceeds float64 (documented)
        Case("_core.ddc_row_norms", (_F64(2, 3), None, _F64(2), 1.7976931348623157e308, 1.0)),
    ),
    "_core.ddc_gauge_dots": (
        Case("_core.ddc_gauge_dots", (_F64(2, 2), _F64(2, 2), None)),
        # non-finite (long run): products of 1e300 and 1e150 overflow, a row's sum NaN (inf −
        # inf); now summed scaled: ±inf only where the exact sum exceeds float64
        Case("_core.ddc_gauge_dots", (Arr("numpy", "float64", (3, 3), scale=1e300, seed=5),
                                      Arr("numpy", "float64", (3, 3), scale=1e150, seed=6), 1)),
        Case("_core.ddc_gauge_dots", (Arr("numpy", "float64", (3, 3), scale=1e300, seed=5),
                                      Arr("numpy", "float64", (3, 3), scale=1e150, seed=6), 0)),
    ),
}
