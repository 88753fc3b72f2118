"""Hypothesis strategies: one per entry point, each producing :class:`~fuzz.specs.Case` s.

Inputs mix the expected (well-formed arrays, models and options) with the edges: empty and
degenerate shapes (0 rows, 1 row, very wide), every dtype (float64/32/16, bfloat16, integers,
bool, complex), ±0, subnormals, huge values (±1e300, ±3e38), NaN/Inf, transposed, strided,
broadcast and offset views, numpy arrays, torch tensors and Python lists, wrong types (None,
strings, numbers, lists, foreign objects) in each argument; small random models (MLPs with
ReLU/tanh/GELU/LayerNorm, the tiny transformer of :mod:`deadspec.models`, convolutions) with
random layer names, targets and loss functions.

:func:`generate` draws ``n`` cases of one entry with ``derandomize=True`` (the same cases on
every run) and no shrinking (the suite records every outcome instead of stopping at the first
failure). :func:`plan` gives the number of cases per entry of a named size.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fuzz.specs import (
    SPECIAL,
    Arr,
    Capsule,
    Case,
    Direction,
    File,
    Fn,
    Layer,
    Loss,
    Model,
    Num,
    Obj,
)

# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------
FLOAT_DTYPES = ("float64", "float64", "float32", "float32", "float16", "bfloat16")
ALL_DTYPES = FLOAT_DTYPES + ("int64", "int32", "uint8", "bool", "complex64", "complex128")
#: Scales of array fills: ordinary, zero, tiny, subnormal-making, huge (float32/float64 range).
SCALES = (1.0, 1.0, 0.0, 1e-3, 1e3, -1.0, 1e-300, 1e-40, 1e-20, 1e19, 1e150, 1e300, 3e38, 1e38,
          1e307, -1e300, 1e-320)
LAYOUTS = ("c", "c", "c", "T", "strided", "fortran", "broadcast", "offset", "reversed", "grad")
LIBS = ("numpy", "torch")
NONFINITE = (Num("nan"), Num("inf"), Num("-inf"))
#: Objects of the wrong type for any argument.
WRONG = (None, "abc", "", 3, -1, 2.5, True, [[1.0, 2.0], [3.0, 4.0]], [], Obj("object"),
         Obj("dict"), Obj("tensor_cuda"), Obj("generator"), Obj("bytes"))

specials = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from(sorted(SPECIAL))), max_size=2
).map(tuple)
finite_specials = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from(
        sorted(k for k, v in SPECIAL.items() if abs(v) < float("inf")))), max_size=2
).map(tuple)
wrong = st.sampled_from(WRONG)
seeds = st.integers(0, 7)


def floats_or(*extra: Any) -> st.SearchStrategy:
    """Finite floats of any magnitude (±0, subnormals, 1e308), NaN/Inf and ``extra``."""
    return st.one_of(
        st.sampled_from(extra) if extra else st.nothing(),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(NONFINITE),
    )


def ints_or(*extra: Any) -> st.SearchStrategy:
    return st.one_of(
        st.sampled_from(extra) if extra else st.nothing(),
        st.integers(-3, 8),
        st.sampled_from([2**31, 2**62, -(2**62), 2**64]),
    )


def arr(
    shape: st.SearchStrategy,
    *,
    libs: tuple[str, ...] = LIBS,
    dtypes: tuple[str, ...] = FLOAT_DTYPES,
    fills: tuple[str, ...] = ("normal",),
    scales: tuple[float, ...] = SCALES,
    layouts: tuple[str, ...] = LAYOUTS,
    special: bool = True,
    wild: bool = True,
) -> st.SearchStrategy:
    """Half the draws are typical (float64/float32, scale 1, contiguous or transposed, no
    special value); a quarter extreme but finite (any scale, ±0, subnormal and huge entries,
    strided); a quarter draw every option (NaN/Inf, every dtype and layout), unless not
    ``wild``."""
    usual = tuple(d for d in dtypes if d in ("float64", "float32")) or dtypes[:1]
    typical = st.builds(
        Arr,
        st.sampled_from(libs),
        st.sampled_from(usual),
        shape,
        fill=st.sampled_from(fills),
        scale=st.just(1.0),
        seed=seeds,
        layout=st.sampled_from(tuple(x for x in layouts if x in ("c", "T")) or layouts[:1]),
    )
    everything = st.builds(
        Arr,
        st.sampled_from(libs),
        st.sampled_from(dtypes),
        shape,
        fill=st.sampled_from(fills),
        scale=st.sampled_from(scales),
        seed=seeds,
        special=specials if special else st.just(()),
        layout=st.sampled_from(layouts),
    )
    extreme = st.builds(
        Arr,
        st.sampled_from(libs),
        st.sampled_from(usual),
        shape,
        fill=st.sampled_from(fills),
        scale=st.sampled_from(tuple(x for x in scales if x != 1.0) or scales),
        seed=seeds,
        special=finite_specials if special else st.just(()),
        layout=st.sampled_from(tuple(x for x in layouts if x in ("c", "T", "strided"))
                               or layouts[:1]),
    )
    if not wild:
        return st.one_of(typical, typical, extreme)
    return st.one_of(typical, typical, extreme, everything)


def mostly(valid: tuple[Any, ...], wild: st.SearchStrategy) -> st.SearchStrategy:
    """One of the valid values three times in four, else a draw of ``wild``."""
    v = st.sampled_from(valid)
    return st.one_of(v, v, v, wild)


def one_in(draw: Any, n: int) -> bool:
    """True about once in n draws (hypothesis's integers favour their bounds, so a test like
    ``integers(0, n - 1) == 0`` would fire far more often)."""
    return draw(st.sampled_from([False] * (n - 1) + [True]))


def dims(lo: int = 0, hi: int = 6) -> st.SearchStrategy:
    return st.integers(lo, hi)


#: 2-D shapes: small, degenerate (0 rows/columns, 1 row), very wide or tall; other ranks.
MATRIX = st.one_of(
    st.tuples(dims(1, 6), dims(1, 6)),
    st.tuples(dims(1, 6), dims(1, 6)),
    st.sampled_from([(0, 0), (0, 3), (3, 0), (1, 1), (1, 200), (200, 1), (2, 300)]),
    st.sampled_from([(), (3,), (2, 3, 4), (1, 1, 1)]),
)
SQUARE = st.one_of(
    dims(1, 6).map(lambda n: (n, n)),
    dims(1, 6).map(lambda n: (n, n)),
    st.sampled_from([(0, 0), (1, 1), (40, 40), (2, 3), (3,), (2, 2, 2)]),
)
VECTOR = st.one_of(
    dims(1, 8).map(lambda n: (n,)), st.sampled_from([(0,), (1,), (300,), (2, 2), ()])
)


def matrices(shape: st.SearchStrategy = MATRIX, **kw: Any) -> st.SearchStrategy:
    kw.setdefault("dtypes", ALL_DTYPES)
    kw.setdefault("fills", ("normal", "normal", "zeros", "ones", "lowrank", "arange", "psd"))
    return arr(shape, **kw)


def or_wrong(s: st.SearchStrategy) -> st.SearchStrategy:
    """``s`` mostly, a wrong-typed value sometimes."""
    return st.one_of(s, s, s, wrong)


def kwargs(**options: st.SearchStrategy) -> st.SearchStrategy:
    """A dict with any subset of the options (absent: the default)."""
    return st.fixed_dictionaries({}, optional=options)


def case(entry: str, args: st.SearchStrategy, kw: st.SearchStrategy | None = None,
         ops: st.SearchStrategy | None = None) -> st.SearchStrategy:
    return st.builds(Case, st.just(entry), args, kw if kw is not None else st.just({}),
                     ops if ops is not None else st.just(()))


def capsules(s: st.SearchStrategy) -> st.SearchStrategy:
    """A DLPack capsule of s (legacy, versioned or already used), or s itself, or a wrong type:
    what the ``_core`` bindings receive."""
    return st.one_of(
        st.builds(Capsule, s, versioned=st.booleans()),
        st.builds(Capsule, s, versioned=st.booleans()),
        st.builds(Capsule, s, used=st.just(True)),
        s,
        wrong,
    )


# ---------------------------------------------------------------------------------------------
# Ops
# ---------------------------------------------------------------------------------------------
SIDE = st.sampled_from(["auto", "feature", "sample", "bogus", None, 3])
BOOL = st.sampled_from([False, True, False, True, None, "yes", 2])
RTOL = floats_or(None, 0.0, 1e-3, 0.5, 1.0, -1.0, 1e-300)
GAP = floats_or(1e3, 1.0, 0.5, 1e300, 10.0)
INPUT_DTYPE = st.sampled_from(["float32", "float64", "bfloat16", "float16", "int8", "torch.float32",
                               "", None, 3])
RTOL_SIZE = ints_or(None, 0, 1, 10**12)
EIG_FILLS = ("psd", "psd", "sym", "normal", "zeros", "lowrank", "ones")


def _fisher_pair(draw: Any) -> tuple[Any, Any]:
    n, t, d_in, d_out = draw(dims(0, 5)), draw(dims(1, 3)), draw(dims(0, 5)), draw(dims(0, 5))
    seq = draw(st.booleans())
    a_shape = (n, t, d_in) if seq else (n, d_in)
    g_shape = (n, t, d_out) if seq else (n, d_out)
    if one_in(draw, 6):  # mismatched samples or ranks
        g_shape = draw(st.sampled_from([(n + 1, d_out), (n, t, d_out, 1), (d_out,)]))
    lib = draw(st.sampled_from(LIBS))
    mk = {"dtypes": ALL_DTYPES, "libs": (lib,) if draw(st.integers(0, 5)) else LIBS}
    return draw(arr(st.just(a_shape), **mk)), draw(arr(st.just(g_shape), **mk))


@st.composite
def fisher_gram_args(draw: Any, core: bool = False) -> tuple[Any, Any]:
    a, g = _fisher_pair(draw)
    if core:
        return draw(capsules(st.just(a))), draw(capsules(st.just(g)))
    return draw(or_wrong(st.just(a))), draw(or_wrong(st.just(g)))


def eigenvalues(libs: tuple[str, ...] = ("numpy", "torch", "list")) -> st.SearchStrategy:
    return or_wrong(arr(VECTOR, libs=libs, fills=("desc", "desc", "uniform", "normal", "zeros")))


def slope_xy() -> st.SearchStrategy:
    n = st.one_of(dims(2, 8), st.sampled_from([0, 1, 2, 50]))

    @st.composite
    def xy(draw: Any) -> tuple[Any, Any]:
        k = draw(n)
        k2 = k if draw(st.integers(0, 6)) else draw(dims(0, 8))
        fills = ("arange", "normal", "uniform", "const")
        kw = {"libs": ("list", "numpy", "torch"), "fills": fills, "layouts": ("c", "strided")}
        x = draw(arr(st.just((k,)), **kw))
        y = draw(arr(st.just((k2,)), **kw))
        return draw(or_wrong(st.just(x))), draw(or_wrong(st.just(y)))

    return xy()


METHOD = st.sampled_from(["ols", "theil-sen", "bogus", None])


@st.composite
def accumulator_ops(draw: Any, features: int, core: bool) -> tuple[Any, ...]:
    h = features if isinstance(features, int) and 0 <= features <= 8 else 3
    batch = arr(
        st.one_of(st.tuples(dims(0, 5), st.just(h)), st.tuples(dims(0, 3), dims(0, 5)),
                  st.sampled_from([(h,), (2, h, 1)])),
        dtypes=ALL_DTYPES,
    )
    batch = capsules(batch) if core else or_wrong(batch)
    op = st.one_of(
        st.tuples(st.just("add"), batch),
        st.tuples(st.just("add"), batch),
        st.tuples(st.just("merge"), st.sampled_from([h, h, h + 1]), st.lists(batch, max_size=2)
                  .map(tuple)),
        st.tuples(st.just("merge_obj"), wrong),
        st.tuples(st.just("gram"), BOOL),
        st.tuples(st.just("mean")),
        st.tuples(st.just("count")),
    )
    ops = draw(st.lists(op, min_size=1, max_size=5))
    return tuple(ops) + (("gram", False), ("gram", True), ("mean",))


def accumulator(entry: str, core: bool) -> st.SearchStrategy:
    features = st.one_of(dims(1, 5), st.sampled_from([0, -1, 2**40, "3", None, 2.5]))

    @st.composite
    def build(draw: Any) -> Case:
        f = draw(features)
        return Case(entry, (f,), {}, draw(accumulator_ops(f, core)))

    return build()


MISC = st.one_of(
    st.tuples(st.just("build_info")),
    st.tuples(st.just("num_threads")),
    st.tuples(st.just("set_num_threads"), ints_or(1, 2, "2", None, 1.5, "auto", "Auto ")),
    st.tuples(st.just("cmake_dir")),
    st.tuples(st.just("default_rtol"), INPUT_DTYPE, ints_or(1, 100)),
    st.tuples(st.just("fisher_route"), ints_or(), ints_or(), ints_or(), ints_or()),
)


# ---------------------------------------------------------------------------------------------
# Models, data, losses
# ---------------------------------------------------------------------------------------------
INIT_SCALES = (1.0, 1.0, 1.0, 0.0, 1e-30, 1e-3, 1e3, 1e19, 1e150, 1e300)
#: Finite data scales that stay valid but reach the ends of float64/float32 (Grams of 1e150
#: data are 1e300; of 1e-160 data, subnormal).
SANE_SCALES64 = (1.0, 1.0, 1.0, 1.0, 1e-160, 1e-100, 1e100, 1e150, 1e-300, 1e300)
SANE_SCALES32 = (1.0, 1.0, 1.0, 1.0, 1e-20, 1e-25, 1e19, 1e-40, 1e30)


@st.composite
def models(draw: Any, kinds: tuple[str, ...] | None = None, sane: bool = False) -> Model:
    """A small model. ``sane``: float64/float32 with the seeded init (its first layer may have
    dead units); otherwise one model in three is wild (float16/bfloat16, scaled parameters,
    NaN/Inf or huge entries)."""
    kinds = kinds or ("mlp", "mlp", "mlp", "mlp_ln", "transformer", "rrr", "conv", "noparams",
                      "tuple_out")
    kind = draw(st.sampled_from(kinds))
    if kind == "transformer":
        heads = draw(st.sampled_from([1, 2]))
        widths = (draw(st.integers(2, 5)), heads * draw(st.sampled_from([1, 2])), heads)
    elif kind == "mlp":
        widths = tuple(draw(st.lists(dims(1, 5), min_size=2, max_size=4)))
    else:
        widths = (draw(dims(1, 4)), draw(dims(1, 5)), draw(dims(1, 4)))
    wild = not sane and one_in(draw, 3)
    dtypes = ["float64", "float32"] + (["float16", "bfloat16"] if wild else [])
    return Model(
        kind,
        widths=widths,
        act=draw(st.sampled_from(["relu", "relu", "linear", "tanh", "gelu"])),
        bias=draw(st.booleans()),
        dtype=draw(st.sampled_from(dtypes if kind != "transformer" else dtypes[:2])),
        seed=draw(seeds),
        init_scale=draw(st.sampled_from(INIT_SCALES)) if wild else 1.0,
        dead=tuple(draw(st.lists(dims(0, 4), max_size=2))),
        special=draw(specials) if wild and draw(st.booleans()) else (),
        layernorm=draw(st.booleans()) if kind == "transformer" else False,
    )


def _n(draw: Any, sane: bool = False) -> int:
    if sane:
        return draw(st.sampled_from([2, 3, 4, 5, 6, 8, 12]))
    return draw(st.one_of(dims(2, 8), dims(2, 8), st.sampled_from([0, 1, 40])))


def _scale(draw: Any, m: Model) -> float:
    return draw(st.sampled_from(SANE_SCALES64 if m.dtype == "float64" else SANE_SCALES32))


def inputs_for(draw: Any, m: Model, n: int, sane: bool = False) -> Any:
    """Inputs of the model's shape and dtype (``sane``: always, at a valid but possibly extreme
    scale); otherwise mostly, and sometimes of a wrong shape, dtype, layout or type."""
    w = m.widths
    if m.kind == "transformer":
        return Arr("torch", "int64", (n, 3), fill="int", scale=float(w[0] + 1), seed=draw(seeds))
    shape = (n, w[0], 4) if m.kind == "conv" else (n, w[0])
    if sane:
        return Arr("torch", m.dtype, shape, seed=draw(seeds), scale=_scale(draw, m),
                   layout=draw(st.sampled_from(["c", "c", "T"])))
    if m.kind == "conv":
        good = draw(arr(st.just(shape), libs=("torch",), layouts=("c", "T")))
    else:
        good = draw(arr(st.just(shape), libs=("torch",), dtypes=(m.dtype,) * 5 + FLOAT_DTYPES,
                        scales=(1.0,) * 6 + SCALES, layouts=("c",) * 4 + LAYOUTS))
    bad = st.one_of(
        arr(st.sampled_from([(n, w[0] + 1), (n,), (n, 1, w[0]), (0, w[0])]), libs=("torch",)),
        arr(st.just((n, w[0])), libs=("numpy", "list"), special=False),
        wrong,
    )
    return draw(st.one_of(st.just(good), st.just(good), st.just(good), st.just(good), bad))


def n_out(m: Model) -> int:
    return m.widths[0] if m.kind == "transformer" else m.widths[-1]


def targets_for(draw: Any, m: Model, n: int, sane: bool = False) -> tuple[Any, Any]:
    """(targets, loss_fn). ``sane``: integer classes with cross-entropy, or float targets of the
    output's shape with a squared loss (the default loss or an explicit one)."""
    out = n_out(m)
    cls = Arr("torch", "int64", (n,), fill="int", scale=float(out), seed=draw(seeds))
    if sane:
        if m.kind == "transformer" or draw(st.booleans()):
            return cls, draw(st.sampled_from([None, None, Loss("ce")]))
        reg = Arr("torch", m.dtype, (n, out), seed=draw(seeds), scale=_scale(draw, m))
        return reg, draw(st.sampled_from([None, None, Loss("mse"), Loss("l1")]))
    reg = Arr("torch", m.dtype, (n, out), seed=draw(seeds), scale=draw(st.sampled_from(SCALES)))
    targets = draw(st.sampled_from([cls, cls, reg, reg, None,
                                    Arr("torch", "int64", (n + 1,), fill="int", scale=float(out)),
                                    Arr("torch", "float32", (n,)),
                                    Arr("torch", "int64", (n,), fill="int", scale=float(out + 5)),
                                    "abc"]))
    return targets, draw(LOSSES)


LOSSES = st.sampled_from([None, None, None, Loss("ce"), Loss("mse"), Loss("bce"), Loss("l1"),
                          Loss("ce_mean"), Loss("mse_mean"), Loss("token_ce"), Loss("nan"),
                          Loss("transposed"), Loss("raises"), Loss("notcallable")])


def layer(linear: bool = False, sane: bool = False) -> st.SearchStrategy:
    """A module name of the case's model (by index; ``linear``: among its nn.Linear), or
    (unless ``sane``) a name it does not have or a non-string."""
    real = st.builds(Layer, dims(0, 12), linear_only=st.just(linear))
    if sane:
        return real
    return st.one_of(real, real, real, st.sampled_from(
        [Layer(name="nope"), Layer(name=""), Layer(name="0.weight"), 3, None]))


SANE_T = st.sampled_from([None, None, [0.01, 0.1], [1e-3, 1e-2, 1e-1], [0.05, 0.1, 0.2, 0.4],
                          [1e-6, 1e-3], [0.5, 1.0]])
T_GRID = st.one_of(SANE_T, st.sampled_from([
    [0.1], [0.1, 0.1, 0.1], [-1.0, 1.0], [0.0, 0.1], [Num("nan"), 0.1], [1e-300, 1e-200],
    [1e300, 1e301], [], "abc", [1.0, 2.0, 4.0], [1e-320, 1e-310],
]))


@st.composite
def model_call(draw: Any, entry: str, kinds: tuple[str, ...] | None = None,
               sane: bool = False) -> Case:
    """A model, inputs, targets and loss; the entry's own options are added by the caller."""
    m = draw(models(kinds, sane))
    n = _n(draw, sane)
    targets, loss = targets_for(draw, m, n, sane)
    return Case(entry, (m, inputs_for(draw, m, n, sane)), {"targets": targets, "loss_fn": loss})


def with_options(base: st.SearchStrategy, options: st.SearchStrategy,
                 drop: tuple[str, ...] = ()) -> st.SearchStrategy:
    def merge(pair: tuple[Case, dict]) -> Case:
        c, extra = pair
        kw = {k: v for k, v in c.kwargs.items() if k not in drop}
        kw.update(extra)
        return Case(c.entry, c.args, kw, c.ops)

    return st.tuples(base, options).map(merge)


def tiers(sane: st.SearchStrategy, wild: st.SearchStrategy) -> st.SearchStrategy:
    """Two cases in three well-formed (valid options, consistent data, extreme but finite
    scales: where silent non-finite results hide), one in three anything goes."""
    return st.one_of(sane, sane, wild)


def read_case() -> st.SearchStrategy:
    sane = kwargs(
        layers=st.one_of(layer(sane=True), st.lists(layer(sane=True), min_size=1, max_size=3)),
        fisher=st.booleans(),
        labels=st.sampled_from(["observed", "sampled"]),
        batch_size=st.sampled_from([None, 1, 2, 3]),
        center=st.booleans(),
        pool=st.sampled_from(["none", "mean"]),
        rtol=st.sampled_from([None, 0.0, 1e-12, 1e-6, 0.5]),
        gap_ratio=st.sampled_from([1e3, 10.0, 1.5, 1e12]),
        seed=st.sampled_from([None, 0]),
        heads=st.booleans(),
        gauges=st.booleans(),
        route=st.sampled_from(["auto", "block-sum", "materialize"]),
        joint=st.booleans(),
    )
    wild = kwargs(
        layers=st.one_of(layer(), st.lists(layer(), max_size=3)),
        fisher=BOOL,
        labels=st.sampled_from(["observed", "sampled", "expected", "bogus"]),
        batch_size=ints_or(None, 1, 2, 10**9),
        center=st.booleans(),
        pool=st.sampled_from(["none", "mean", "bogus"]),
        rtol=RTOL,
        gap_ratio=GAP,
        seed=ints_or(None, 0),
        task=st.sampled_from([None, "classification", "regression", "bogus"]),
        heads=st.booleans(),
        gauges=st.booleans(),
        route=st.sampled_from(["auto", "block-sum", "materialize", "bogus"]),
        joint=st.booleans(),
    )
    return tiers(with_options(model_call("read", sane=True), sane),
                 with_options(model_call("read"), wild))


def approach_case() -> st.SearchStrategy:
    kinds = ("mlp", "mlp", "mlp", "mlp_ln", "rrr", "transformer")
    sane = st.tuples(st.fixed_dictionaries({"units": st.sampled_from([[0], [0, 1], [1]])},
                                           optional=dict(
        t=SANE_T,
        side=st.sampled_from(["activation", "fisher"]),
        method=st.sampled_from(["ols", "theil-sen"]),
        center=st.booleans(),
        gap_ratio=st.sampled_from([1e3, 10.0]),
        batch_size=st.sampled_from([None, 2]),
    )), layer(True, sane=True)).map(lambda t: {**t[0], "layer": t[1]})
    wild = st.tuples(kwargs(
        units=st.sampled_from([None, None, [0], [0, 1], [], [-1], [100], "0", [0, 0]]),
        t=T_GRID,
        side=st.sampled_from(["activation", "fisher", "bogus"]),
        next_layer=st.one_of(st.none(), layer(True)),
        method=METHOD,
        center=st.booleans(),
        gap_ratio=GAP,
        batch_size=ints_or(None, 1, 2),
    ), layer(True)).map(lambda t: {**t[0], "layer": t[1]})
    return tiers(with_options(model_call("approach_slope", kinds, sane=True), sane),
                 with_options(model_call("approach_slope", kinds), wild))


DIRECTIONS = st.one_of(
    st.builds(Direction, st.sampled_from(["flat", "flat", "dict", "wronglen", "badname"]),
              fill=st.sampled_from(["normal", "normal", "zeros"]),
              scale=st.sampled_from([1.0, 1.0, 1e-300, 1e300, 0.0]), seed=seeds,
              keep=dims(0, 3), special=specials),
    wrong,
)
SANE_DIRECTIONS = st.builds(Direction, st.sampled_from(["flat", "dict"]), seed=seeds,
                            keep=dims(1, 3), scale=st.sampled_from([1.0, 1.0, 1e-150, 1e150]))


def order_case() -> st.SearchStrategy:
    sane = kwargs(
        t=SANE_T,
        path=st.sampled_from([None, None, Fn("path_line")]),
        labels=st.sampled_from(["expected", "observed", "sampled"]),
        method=st.sampled_from(["ols", "theil-sen"]),
        n_probes=st.sampled_from([1, 2]),
        seed=st.sampled_from([None, 0]),
        batch_size=st.sampled_from([None, 2]),
    )
    wild = kwargs(
        t=T_GRID,
        path=st.sampled_from([None, Fn("path_line")]),
        labels=st.sampled_from(["expected", "observed", "sampled", "bogus"]),
        task=st.sampled_from([None, "classification", "regression", "bogus"]),
        method=METHOD,
        slope_tol=floats_or(0.5),
        gauge_rtol=floats_or(1e-8),
        gauge_atol=floats_or(0.0),
        n_probes=ints_or(1, 2),
        seed=ints_or(None, 0),
        batch_size=ints_or(None, 1, 3),
    )

    def add_direction(t: tuple[Case, dict, Any]) -> Case:
        return Case(t[0].entry, t[0].args + (t[2],), {**t[0].kwargs, **t[1]})

    return tiers(
        st.tuples(model_call("direction_order", sane=True), sane, SANE_DIRECTIONS)
        .map(add_direction),
        st.tuples(model_call("direction_order"), wild, DIRECTIONS).map(add_direction),
    )


def classify_case() -> st.SearchStrategy:
    sane = kwargs(
        layers=st.one_of(st.none(), st.lists(layer(True, sane=True), min_size=1, max_size=2)),
        n_small=st.sampled_from([0, 1, 2]),
        gauges=st.booleans(),
        candidates=st.one_of(st.none(), st.dictionaries(st.sampled_from(["u", "v"]),
                                                        SANE_DIRECTIONS, max_size=2)),
        t=SANE_T,
        labels=st.sampled_from(["expected", "observed", "sampled"]),
        n_probes=st.sampled_from([1, 2]),
        seed=st.sampled_from([None, 0]),
    )
    wild = kwargs(
        layers=st.one_of(st.none(), st.lists(layer(True), max_size=2)),
        n_small=ints_or(0, 1, 2, True, 1.5),
        gauges=st.booleans(),
        candidates=st.one_of(st.none(), st.dictionaries(st.sampled_from(["u", "v"]), DIRECTIONS,
                                                        max_size=2), wrong),
        output_layer=st.one_of(st.none(), layer(True)),
        t=T_GRID,
        labels=st.sampled_from(["expected", "observed", "sampled", "bogus"]),
        task=st.sampled_from([None, "classification", "regression", "bogus"]),
        slope_tol=floats_or(0.5),
        gauge_rtol=floats_or(1e-8),
        n_probes=ints_or(1, 2),
        seed=ints_or(None, 0),
        batch_size=ints_or(None, 1, 3),
    )
    return tiers(with_options(model_call("classify_directions", sane=True), sane),
                 with_options(model_call("classify_directions"), wild))


def gauge_directions_case() -> st.SearchStrategy:
    sane = st.builds(lambda m, kw: Case("gauge_directions", (m,), kw), models(sane=True),
                     kwargs(logit_shift=st.booleans()))
    wild = case("gauge_directions", st.tuples(st.one_of(models(), wrong)),
                kwargs(output_layer=layer(True), logit_shift=BOOL))
    return tiers(sane, wild)


def discover_case() -> st.SearchStrategy:
    def inputs_kw(c: Case) -> Case:
        return Case(c.entry, c.args[:1], {**c.kwargs, "inputs": c.args[1]})

    sane = with_options(model_call("gauges.discover", sane=True), kwargs(
        loss=st.sampled_from(["cross_entropy", None]), check=st.booleans(),
        heads=st.booleans(), chains=st.booleans()))
    wild = with_options(model_call("gauges.discover"), kwargs(
        loss=st.sampled_from(["cross_entropy", None, "mse"]), check=BOOL,
        heads=st.booleans(), chains=st.booleans()))
    return tiers(sane.map(inputs_kw), wild.map(inputs_kw))


def gauge_check_case() -> st.SearchStrategy:
    def build(sane: bool) -> st.SearchStrategy:
        how = st.one_of(
            st.tuples(st.just("discovered"), dims(0, 5)),
            st.tuples(st.just("discovered"), dims(0, 5)),
            st.tuples(st.just("declared"), st.just("Pair"), layer(True, sane), layer(True, sane)),
            st.tuples(st.just("declared"), st.just("NormScale"), layer(sane=sane),
                      layer(True, sane)),
            st.tuples(st.just("declared"), st.just("LogitShift"), layer(True, sane)),
        )
        options = kwargs(
            rtol=st.sampled_from([1e-10, 1e-6]) if sane else floats_or(1e-10),
            spread=st.sampled_from([1.0, 0.1, 10.0]) if sane else floats_or(1.0, 0.0, -1.0, 1e300),
            raise_on_fail=st.booleans(),
        )

        def fix(t: tuple[Case, dict, tuple]) -> Case:
            c, extra, h = t
            loss = c.kwargs["loss_fn"]
            if isinstance(loss, Loss) and loss.name in ("ce", "mse"):
                loss = Loss(loss.name + "_mean")  # check() takes a scalar loss
            kw = {"targets": c.kwargs["targets"], "loss_fn": loss, **extra}
            return Case(c.entry, c.args, kw, (h,))

        return st.tuples(model_call("gauges.check", sane=sane), options, how).map(fix)

    return tiers(build(True), build(False))


# -- optimizers --------------------------------------------------------------------------------
GRAD_SCALES = (1.0, 1.0, 1e-3, 0.0, 1e10, 1e20, 1e30, 1e37, 1e150, 1e300, 1e-300, 1e-40)
#: Finite gradients of a float32 model up to 1e37 (1e38 still fits float32; its square does
#: not), of a float64 model up to 1e300.
SANE_GRAD_SCALES = (1.0, 1.0, 1e-3, 0.0, 1e10, 1e20, 1e25, 1e30, 1e37, 1e-30, 1e-40)


@st.composite
def optim_ops(draw: Any, m: Model, sane: bool = False) -> tuple[Any, ...]:
    n = draw(dims(1, 6))
    targets, loss = targets_for(draw, m, n, sane)
    backward = ("backward", inputs_for(draw, m, n, sane), targets,
                loss if sane else draw(st.sampled_from([None, Loss("ce"), Loss("mse")])))
    scales = SANE_GRAD_SCALES + ((1e150, 1e300) if m.dtype == "float64" else ())
    if sane:
        step = st.one_of(
            st.tuples(st.just("grad"), st.none(), st.sampled_from(scales), seeds, st.just(())),
            st.just(backward),
            st.sampled_from([("state",), ("nograd",)]),
        )
    else:
        step = st.one_of(
            st.tuples(st.just("grad"), st.none(), st.sampled_from(GRAD_SCALES), seeds,
                      st.lists(st.tuples(dims(0, 30), st.sampled_from(
                          ["nan", "inf", "-inf", "1e38", "-0.0"])), max_size=1).map(tuple)),
            st.tuples(st.just("grad"), st.none(), st.sampled_from(GRAD_SCALES), seeds,
                      st.just(())),
            st.just(backward),
            st.sampled_from([("nograd",), ("state",), ("closure",)]),
        )
    return tuple(draw(st.lists(step, min_size=1, max_size=4)))


OPTIM_KINDS = ("mlp", "mlp", "mlp_ln", "transformer", "rrr", "conv")
COMMON_OPTIM = dict(
    weight_decay=floats_or(0.0, 0.1, -1.0, 1e10),
    gauge_mode=st.sampled_from(["zero", "damped", "balance", "bogus"]),
    balance_rate=floats_or(0.1, 0.0, 1.0, 2.0),
    loss=st.sampled_from(["cross_entropy", None, "mse"]),
    nonfinite=st.sampled_from(["raise", "skip", "bogus"]),
    track_residuals=st.booleans(),
    maximize=st.booleans(),
    foreach=st.sampled_from([None, True, False]),
    plain=st.booleans(),
)
SANE_COMMON_OPTIM = dict(
    weight_decay=st.sampled_from([0.0, 0.1]),
    gauge_mode=st.sampled_from(["zero", "damped", "balance"]),
    loss=st.sampled_from(["cross_entropy", None]),
    nonfinite=st.sampled_from(["raise", "skip"]),
    track_residuals=st.booleans(),
    maximize=st.booleans(),
    foreach=st.sampled_from([None, True, False]),
    plain=st.booleans(),
)
ADAM_OPTIONS = kwargs(
    lr=floats_or(1e-3, 0.0, 1.0, -1.0, 1e10),
    betas=st.sampled_from([(0.9, 0.999), (0.0, 0.0), (1.0, 0.5), (0.9,), (0.9, 1.0 - 1e-16),
                           "ab", (Num("nan"), 0.9)]),
    eps=floats_or(1e-8, 0.0, -1.0, 1e-300),
    rotations=st.booleans(),
    form=st.sampled_from(["coordinate", "split", "bogus"]),
    amsgrad=st.sampled_from([False, False, True]),
    fused=st.sampled_from([None, None, True]),
    **COMMON_OPTIM,
)
SANE_ADAM = kwargs(
    lr=st.sampled_from([1e-3, 1e-2, 0.0]),
    betas=st.sampled_from([(0.9, 0.999), (0.0, 0.0), (0.5, 0.9)]),
    eps=st.sampled_from([1e-8, 0.0, 1e-300]),
    rotations=st.booleans(),
    form=st.sampled_from(["coordinate", "split"]),
    **SANE_COMMON_OPTIM,
)
MUON_OPTIONS = kwargs(
    lr=floats_or(0.02, 0.0, 1.0, -1.0, 1e10),
    momentum=floats_or(0.95, 0.0, 1.0, -1.0),
    nesterov=st.booleans(),
    ns_steps=ints_or(5, 0, 1, 100),
    ns_coefficients=st.sampled_from([(3.4445, -4.7750, 2.0315), (1.0, 0.0, 0.0), (1e300, 1e300,
                                     1e300), (1.0,)]),
    adamw_lr=floats_or(3e-4, 0.0, -1.0),
    adamw_betas=st.sampled_from([(0.9, 0.95), (1.0, 0.5), (0.9,)]),
    adamw_eps=floats_or(1e-8, 0.0, -1.0),
    ns_dtype=st.sampled_from([None, Obj("dtype_bfloat16"), Obj("dtype_float32"),
                              Obj("dtype_int64"), "float32"]),
    ns_eps=floats_or(1e-7, 0.0),
    per_head=st.booleans(),
    head=st.sampled_from(["auto", None, "bogus", Layer(2, linear_only=True)]),
    **COMMON_OPTIM,
)
SANE_MUON = kwargs(
    lr=st.sampled_from([0.02, 1e-3, 0.0]),
    momentum=st.sampled_from([0.95, 0.0, 0.5]),
    nesterov=st.booleans(),
    ns_steps=st.sampled_from([5, 1, 10]),
    adamw_lr=st.sampled_from([3e-4, 0.0]),
    adamw_eps=st.sampled_from([1e-8, 0.0]),
    ns_dtype=st.sampled_from([None, Obj("dtype_bfloat16"), Obj("dtype_float32")]),
    per_head=st.booleans(),
    head=st.sampled_from(["auto", None]),
    **SANE_COMMON_OPTIM,
)


def optim_case(entry: str, sane_options: st.SearchStrategy,
               options: st.SearchStrategy) -> st.SearchStrategy:
    def build(sane: bool) -> st.SearchStrategy:
        @st.composite
        def one(draw: Any) -> Case:
            m = draw(models(OPTIM_KINDS, sane))
            opts = draw(sane_options if sane else options)
            return Case(entry, (m,), opts, draw(optim_ops(m, sane)))

        return one()

    return tiers(build(True), build(False))


# -- llc ---------------------------------------------------------------------------------------
def llc_case() -> st.SearchStrategy:
    @st.composite
    def one(draw: Any, sane: bool) -> Case:
        m = draw(models(("mlp", "mlp", "rrr"), sane))
        m = Model(m.kind, widths=m.widths[:3], act=m.act, bias=m.bias, dtype=m.dtype,
                  seed=m.seed, init_scale=m.init_scale, special=m.special)
        n = _n(draw, sane)
        x = inputs_for(draw, m, n, sane)
        y, loss = targets_for(draw, m, n, sane)
        if sane:
            loss = Loss("ce_nll") if y.dtype == "int64" else Loss("gauss", sigma=draw(
                st.sampled_from([1.0, 0.5, 1e-3, 1e3])))
            kw = draw(kwargs(batch_size=st.sampled_from([None, 1, 2]), seed=st.just(0),
                             vectorize=st.sampled_from(["auto", True, False]),
                             check_nll=st.booleans()))
            kw.update(
                loss_fn=loss, data=(x, y),
                epsilon=draw(st.sampled_from([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 1e-8])),
                gamma=draw(st.sampled_from([1.0, 100.0, 0.0, 1e4])),
                chains=draw(st.sampled_from([1, 2, 3])),
                draws=draw(st.sampled_from([1, 2, 3, 5])),
                burnin=draw(st.sampled_from([0, 1, 3])),
            )
        else:
            kw = draw(kwargs(
                n=ints_or(None, 100),
                nbeta=floats_or(None, 1.0),
                batch_size=ints_or(None, 1, 2, 10**9),
                seed=ints_or(0, None),
                vectorize=st.sampled_from(["auto", True, False, "bogus"]),
                check_nll=st.booleans(),
                diverge_threshold=floats_or(None, 1.0),
            ))
            kw.update(
                data=draw(st.sampled_from([(x, y), (x, y), (x, y), (x,), x, None, (x, y, y)])),
                loss_fn=draw(st.sampled_from([
                    Loss("gauss"), Loss("gauss", sigma=0.5), Loss("ce_nll"), Loss("mse"),
                    Loss("mse_mean"), Loss("nan"), Loss("notcallable"), Loss("gauss", sigma=0.0),
                    Loss("gauss", sigma=-1.0), loss])),
                epsilon=draw(floats_or(1e-4, 1e-3, 1e-4, 0.0, -1.0, 1e10)),
                gamma=draw(floats_or(1.0, 1.0, 0.0, -1.0, 1e10)),
                chains=draw(st.sampled_from([1, 2, 2, 3, 1, 2, 0, -1, 2.5, None, 10**6])),
                # (10**10 is beyond _limits.MAX_STEPS: refused at once; an in-bound request
                # such as 3 chains x 10**7 draws is a long computation, not a hang)
                draws=draw(st.sampled_from([1, 2, 3, 5, 2, 0, -1, 10**10])),
                burnin=draw(st.sampled_from([0, 1, 3, 0, -1])),
            )
        data = kw.pop("data")
        kw.update(warn=False, progress=False)
        return Case("llc.estimate", (m, data), kw)

    return tiers(one(True), one(False))


# -- monitor -----------------------------------------------------------------------------------
MONITOR_AFTER = [
    ("records",), ("rates", {}), ("rates", {"window": "all"}), ("cells",),
    ("dead", Layer(0, linear_only=True)), ("approach", Layer(0, linear_only=True)),
    ("csv", "records"), ("csv", "rates"), ("state",), ("plot",),
]


def monitor_case() -> st.SearchStrategy:
    @st.composite
    def one(draw: Any, sane: bool) -> Case:
        m = draw(models(("mlp", "mlp", "mlp_ln", "rrr", "transformer"), sane))
        n = _n(draw, sane)
        targets, loss = targets_for(draw, m, n, sane)
        if sane:
            kw = draw(kwargs(
                fisher=st.booleans(),
                approach=st.sampled_from(["dead-norm", "dead-projection", Fn("approach_norm"),
                                          Fn("approach_const")]),
                window=st.sampled_from(["after-peak", "all"]),
                min_points=st.sampled_from([2, 3, 4]),
                fixed_active=st.booleans(),
                method=st.sampled_from(["ols", "theil-sen"]),
                labels=st.sampled_from(["observed", "sampled"]),
                center=st.booleans(),
            ))
            layers = draw(st.one_of(st.none(), layer(True, sane=True)))
            every = draw(st.sampled_from([1, 1, 2]))
            after = MONITOR_AFTER
        else:
            kw = draw(kwargs(
                fisher=st.booleans(),
                approach=st.sampled_from(["dead-norm", "dead-projection", Fn("approach_norm"),
                                          Fn("approach_nan"), Fn("approach_const"),
                                          {"0": "dead-norm"}, "bogus", 3]),
                predictions=st.sampled_from([None, {"activation.logdet_plus": 1.0},
                                             {"bogus": 1.0}]),
                tolerance=floats_or(0.25, 0.0, -1.0),
                min_r2=floats_or(0.9, 0.0, 2.0),
                window=st.sampled_from(["after-peak", "all", (0, 10), (5, 1), "bogus", (0,)]),
                frac=floats_or(1.0, 0.5, 0.0, 2.0),
                min_points=ints_or(4, 2, 1),
                fixed_active=st.booleans(),
                method=METHOD,
                labels=st.sampled_from(["observed", "sampled", "bogus"]),
                batch_size=ints_or(None, 2),
                center=st.booleans(),
                rtol=RTOL,
                gap_ratio=GAP,
                bogus_option=st.just(1),
            ))
            layers = draw(st.one_of(st.none(), layer(True), st.lists(layer(), max_size=2)))
            every = draw(st.sampled_from([1, 1, 2, 0, -1, 2.5, "1"]))
            after = MONITOR_AFTER + [("rates", {"bogus": 1}), ("dead", Layer(name="nope")),
                                     ("csv", "bogus")]
        kw.update(layers=layers, every=every, inputs=inputs_for(draw, m, n, sane),
                  targets=targets, loss_fn=loss)
        record = st.tuples(st.just("step"), st.integers(0 if sane else -1, 6), st.booleans())
        train = st.tuples(st.just("train"), seeds,
                          st.sampled_from([0.1, 0.0, 0.01] if sane else [0.1, 0.0, 1e300]))
        steps = draw(st.lists(st.one_of(record, record, train), min_size=1,
                              max_size=8 if sane else 6))
        rest = draw(st.lists(st.sampled_from(after), max_size=4))
        ops = tuple(steps) + (("records",),) + tuple(rest)
        return Case("monitor.DeadDirectionMonitor", (m,), kw, ops)

    return tiers(one(True), one(False))


# -- command line ------------------------------------------------------------------------------
CKPT_KINDS = ("ckpt", "ckpt", "ckpt_wrapped", "ckpt_prefix", "safetensors", "ckpt_wrongkeys",
              "ckpt_wrongshape", "garbage", "empty", "dir", "pickle")
DATA_KINDS = ("data_pt", "data_pt", "data_npz", "data_tensor", "data_badtargets", "data_nan",
              "garbage", "empty", "dir", "pickle", "ckpt")
SUFFIX = {"safetensors": ".safetensors", "data_npz": ".npz", "dir": "", "factory": ".py"}


def cli_case() -> st.SearchStrategy:
    @st.composite
    def one(draw: Any, sane: bool) -> Case:
        widths = tuple(draw(st.lists(dims(1, 4), min_size=2, max_size=3)))
        dw = (draw(dims(2 if sane else 1, 6)), widths[0], widths[-1])
        ckpt_kinds = CKPT_KINDS[:5] if sane else CKPT_KINDS
        data_kinds = DATA_KINDS[:4] if sane else DATA_KINDS
        ck = [draw(st.sampled_from(ckpt_kinds)) for _ in range(draw(dims(1, 2)))]
        dk = draw(st.sampled_from(data_kinds))
        files: dict[str, File] = {
            "factory": File("factory", widths=widths, suffix=".py"),
            "data": File(dk, widths=dw, suffix=SUFFIX.get(dk, ".pt"),
                         targets=draw(st.sampled_from(["int", "float", "none"]))),
        }
        for i, k in enumerate(ck):
            files[f"ckpt{i}"] = File(k, widths=widths, seed=i, suffix=SUFFIX.get(k, ".pt"))
        if draw(st.booleans()):
            files["keep"] = File("csv", suffix=".csv")
        names = [f"{{ckpt{i}}}" for i in range(len(ck))]
        # Where the CSV (and the plot) go: mostly a new file; sometimes over one of the inputs
        # (the data file, a checkpoint, the factory), which must never be destroyed.
        out = draw(st.sampled_from(["{new:out.csv}"] * 4 + ["{data}", "{ckpt0}", "{factory}"]
                                   + ([] if sane else ["{new:sub/dir/out.csv}", "{new:}",
                                                       "out.csv"])))
        plot = draw(st.sampled_from([[], [], ["--plot", "{new:p.png}"], ["--plot", "{data}"],
                                     ["--plot", "{ckpt0}"], ["--plot", out]]))
        no_fisher = files["data"].targets == "none" and sane
        if sane:
            argv = ["read", *names, "--model", "{factory}:make", "--data", "{data}", "--out", out]
            argv += plot + (["--no-fisher"] if no_fisher else []) + draw(st.lists(
                st.sampled_from([["--batch-size", "2"], ["--layers", "0"],
                                 ["--labels", "sampled"], ["--no-progress"], ["--seed", "3"]]),
                max_size=2).map(lambda xs: [a for x in xs for a in x]))
        else:
            ckpts = draw(st.sampled_from([names, names, names + names[:1], ["{new:missing.pt}"],
                                          []]))
            model = draw(st.sampled_from(["{factory}:make"] * 4 + [
                "{factory}:nope", "{factory}", "deadspec.models:demo_mlp", "no_such_module:make",
                ":make", "{data}:make", "hf:{new:nofolder}", "deadspec.models:mlp"]))
            data = draw(st.sampled_from(["{data}"] * 4 + ["{new:missing.pt}", "{factory}",
                                                          "{ckpt0}"]))
            argv = ["read", *ckpts, "--model", model, "--data", data, "--out", out] + plot
            argv += draw(st.lists(st.sampled_from([
                ["--no-fisher"], ["--layers", "0"], ["--layers", "zzz"], ["--layers", "0", "1"],
                ["--batch-size", "1"], ["--batch-size", "0"], ["--batch-size", "abc"],
                ["--labels", "sampled"], ["--labels", "bogus"], ["--seed", "-1"],
                ["--no-progress"]]), max_size=3).map(lambda xs: [a for x in xs for a in x]))
            if one_in(draw, 4):
                argv = draw(st.sampled_from([
                    ["info"], [], ["bogus"], ["read"], ["read", "--model"], ["--help"],
                    ["repro", "bogus"], ["repro", "rrr", "--help"],
                    ["demo", "--out", "{data}", "--steps", "2"],
                    ["demo", "--out", "{ckpt0}", "--steps", "1"],
                    ["demo", "--out", "{new:d}", "--steps", "-1"],
                    ["demo", "--out", "{new:d}", "--steps", "abc"],
                ]))
        outputs: tuple[str, ...] = ()
        if "keep" in files and one_in(draw, 4):
            # the user names an existing file of theirs as the output: writing it is asked for
            argv = [("{keep}" if a == out else a) for a in argv]
            outputs = ("keep",)
        return Case("cli.main", tuple(argv), {"files": files, "outputs": outputs})

    return tiers(one(True), one(False))


# ---------------------------------------------------------------------------------------------
# DDC kernels (_core)
# ---------------------------------------------------------------------------------------------
#: How the DDC kernels get their tensors: DLPack capsules (legacy or versioned), now and then the
#: arrays themselves (which they must refuse cleanly).
FLAGS = st.sampled_from([(), (), (), ("versioned",), ("versioned",), (), (), ("raw",)])


def _ddc_tensor(shape: tuple[int, ...], dtype: str, draw: Any, *, scale: float | None = None,
                lay: bool = True, optional: bool = False, nonneg: bool = False,
                sane: bool = False) -> Any:
    """A tensor of a DDC block. ``sane``: C-contiguous, of the block's dtype, at any finite
    scale (a second moment ``nonneg``: entries ≥ 0); otherwise any dtype, layout, scale and
    special value now and then, and None (the entry left out) for the optional ones."""
    fills = ("uniform", "zeros") if nonneg else ("normal",)
    if sane:
        if scale is None:
            scale = draw(st.sampled_from((1.0,) * 6 + (SANE_SCALES64 if dtype == "float64"
                                                       else SANE_SCALES32)))
        elif dtype == "float32":
            scale = min(scale, 1e30)  # finite in float32
        return Arr(draw(st.sampled_from(["torch", "torch", "numpy"])), dtype, shape,
                   fill=draw(st.sampled_from(fills)), seed=draw(seeds), scale=scale)
    return draw(st.one_of(
        arr(st.just(shape), libs=("torch", "numpy"), dtypes=(dtype,) * 6 + ALL_DTYPES,
            scales=(scale,) if scale is not None else SCALES,
            layouts=LAYOUTS if lay else ("c",), fills=fills, special=not nonneg),
        arr(st.just(shape), libs=("torch",), dtypes=(dtype,), scales=(1.0,), layouts=("c",),
            special=False),
        st.just(None) if optional else st.nothing(),
    ))


@st.composite
def adam_block(draw: Any, split: bool = False, sane: bool = False) -> dict[str, Any]:
    """One block of ``ddc_adam_update_many`` (``split``: of the split passes). ``sane``: every
    entry well-formed (finite values at any scale); otherwise any entry may be wrong."""
    two = st.tuples(dims(1, 4), dims(1, 4))
    shape = draw(st.one_of(two, two, two, dims(1, 5).map(lambda n: (n,))) if sane else
                 st.one_of(two, two, two, dims(1, 5).map(lambda n: (n,)),
                           st.sampled_from([(0, 3), (3, 0), (0,), (2, 2, 2)])))
    dtype = draw(st.sampled_from(["float64", "float32"]))
    h = shape[0] if shape else 1
    d = shape[1] if len(shape) > 1 else 1
    lr, b1, b2 = (0.1, 1e-3, 0.0), (0.9, 0.0, 0.5), (0.999, 0.0, 0.5)
    eps, step = (1e-8, 0.0, 1e-300), (1, 2, 10, 10**6)
    b: dict[str, Any] = {
        "param": _ddc_tensor(shape, dtype, draw, sane=sane),
        "grad": _ddc_tensor(shape, dtype, draw, sane=sane),
        "exp_avg": _ddc_tensor(shape, dtype, draw, lay=False, sane=sane),
        "exp_avg_sq": _ddc_tensor(shape, dtype, draw, lay=False, nonneg=True, sane=sane,
                                  scale=draw(st.sampled_from([1.0, 0.0, 1e300]))),
        "lr": draw(st.sampled_from(lr) if sane else mostly(lr, floats_or())),
        "beta1": draw(st.sampled_from(b1) if sane else mostly(b1, floats_or(1.0))),
        "beta2": draw(st.sampled_from(b2) if sane else mostly(b2, floats_or(1.0))),
        "eps": draw(st.sampled_from(eps) if sane else mostly(eps, floats_or(-1.0))),
        "step": draw(st.sampled_from(step) if sane else mostly(step, ints_or(1.0))),
    }
    vec = {"row": (h,), "col": (d,)}
    names = (("row_scale", "row"), ("col_scale", "col"), ("col_mean", "col"), ("row_coef", "row"),
             ("col_coef", "col"), ("col_norm", "col"), ("row_mult", "row"), ("col_mult", "col")) \
        if split else (("scale", None), ("col_scale", "col"))
    for name, axis in names:
        if axis == "col" and len(shape) < 2 and sane:
            continue  # a 1-D block has no columns
        if draw(st.booleans()):
            shapes = [shape, (h, 1), (1, d)] if sane else [shape, (h, 1), (1, d), (d,)]
            shp = vec[axis] if axis else draw(st.sampled_from(shapes))
            b[name] = _ddc_tensor(shp, dtype, draw, optional=not sane, sane=sane,
                                  scale=draw(st.sampled_from([1.0, 0.5, 2.0, 1e300, 1e-300]
                                                             + ([] if sane else [0.0, -1.0]))))
    if not split and draw(st.booleans()):
        b["decay"] = draw(st.sampled_from([1.0, 0.9, 0.0]) if sane else floats_or(1.0, 0.0, 0.9))
    if sane:
        return b
    if one_in(draw, 5):
        b["rot_axis"] = draw(st.sampled_from([0, 1, 2, -1]))
        b["rot_segments"] = draw(st.sampled_from([[(0, 2)], [(0, 1), (1, 2)], [(1, 0)], [(0, 99)],
                                                  [], "x"]))
    if one_in(draw, 9):
        del b[draw(st.sampled_from(sorted(b)))]
    if one_in(draw, 9):
        b["bogus"] = 1
    return b


def blocks_case(entry: str, split: bool) -> st.SearchStrategy:
    sane = st.lists(adam_block(split, sane=True), min_size=1, max_size=3)
    wild = st.one_of(
        st.lists(adam_block(split), min_size=1, max_size=3),
        st.lists(adam_block(split), min_size=1, max_size=3),
        st.just([]),
        st.lists(wrong, min_size=1, max_size=2),
        wrong,
    )
    return tiers(case(entry, st.tuples(sane), st.just({}), FLAGS),
                 case(entry, st.tuples(wild), st.just({}), FLAGS))


def split_units_case() -> st.SearchStrategy:
    """``_core.ddc_split_units``'s dict: a site's per-unit sums, its radial moments, ``out``."""

    @st.composite
    def one(draw: Any, sane: bool) -> Case:
        h = draw(dims(1, 5))
        dtype = draw(st.sampled_from(["float64", "float32"]))
        lrs = draw(st.sampled_from([[], [0.1], [1e-3, 0.0]]))
        scale = 1.0 if sane else None
        d: dict[str, Any] = {k: _ddc_tensor((h,), dtype, draw, sane=sane, scale=scale)
                             for k in ("q", "g_in", "n2", "g_out", "g_only", "exp_avg")}
        d["exp_avg_sq"] = _ddc_tensor((h,), dtype, draw, lay=False, nonneg=True, sane=sane,
                                      scale=scale)
        d["out"] = _ddc_tensor((8 + len(lrs), h), dtype, draw, lay=False, sane=sane, scale=1.0)
        d["step"] = draw(st.sampled_from((1, 2, 10**6)) if sane else ints_or(1, 0))
        d["beta1"] = draw(st.sampled_from((0.9, 0.0)) if sane else floats_or(0.9, 1.0))
        d["beta2"] = draw(st.sampled_from((0.999, 0.5)) if sane else floats_or(0.999, 1.0))
        d["eps"] = draw(st.sampled_from((1e-8, 0.0)) if sane else floats_or(1e-8, -1.0))
        d["lrs"] = lrs
        if draw(st.booleans()):
            d["units"] = draw(st.sampled_from([[0], list(range(h))] if sane else
                                              [[0], [h], [0, 0], "x"]))
        if not sane and one_in(draw, 9):
            del d[draw(st.sampled_from(sorted(d)))]
        return Case("_core.ddc_split_units", (d,), {}, draw(FLAGS))

    return tiers(one(True), one(False))


def adam_update_case() -> st.SearchStrategy:
    @st.composite
    def one(draw: Any, sane: bool) -> Case:
        b = draw(adam_block(sane=sane))
        args = tuple(b.get(k) for k in ("param", "grad", "exp_avg", "exp_avg_sq", "scale"))
        keys = ("lr", "beta1", "beta2", "eps", "step", "col_scale", "decay")
        kw = {k: b[k] for k in keys if k in b}
        return Case("_core.ddc_adam_update", args, kw, draw(FLAGS))

    return tiers(one(True), one(False))


@st.composite
def row_norms_case(draw: Any) -> Case:
    h, d = draw(dims(0, 5)), draw(dims(0, 5))
    dtype = draw(st.sampled_from(["float64", "float32"]))
    args = (
        _ddc_tensor((h, d), dtype, draw),
        _ddc_tensor((d,), dtype, draw, scale=1.0, optional=True),
        _ddc_tensor((h,), dtype, draw, scale=1.0, optional=True),
        draw(floats_or(1.0, 0.0, 1e300)),
        draw(floats_or(1.0, 0.0)),
    )
    return Case("_core.ddc_row_norms", args, {}, draw(FLAGS))


@st.composite
def gauge_dots_case(draw: Any) -> Case:
    h, d = draw(dims(0, 5)), draw(dims(0, 5))
    dtype = draw(st.sampled_from(["float64", "float32"]))
    shape2 = draw(st.sampled_from([(h, d), (h, d), (d, h), (h,)]))
    args = (_ddc_tensor((h, d), dtype, draw), _ddc_tensor(shape2, dtype, draw),
            draw(st.sampled_from([0, 1, 1, 2, -1, None])))
    return Case("_core.ddc_gauge_dots", args, {}, draw(FLAGS))


NOARGS = st.one_of(
    st.tuples(st.sampled_from(["build_info", "eig_backend", "num_threads", "threads_in_use",
                               "set_num_threads_auto", "openmp_runtime"])),
    st.tuples(st.just("set_num_threads"), ints_or(1, 2, None, "2")),
    st.tuples(st.sampled_from(["build_info", "num_threads"]), wrong),
)


# ---------------------------------------------------------------------------------------------
# Well-formed calls of the ops and bindings (the sane tier of each)
# ---------------------------------------------------------------------------------------------
def valid_arr(shape: st.SearchStrategy, fills: tuple[str, ...] = ("normal",),
              libs: tuple[str, ...] = LIBS) -> st.SearchStrategy:
    """A float64/float32 array of a valid layout: ordinary (scale 1) or extreme but finite."""
    return arr(shape, libs=libs, dtypes=("float64", "float32"), fills=fills,
               layouts=("c", "T", "strided"), wild=False)


NONEMPTY = st.tuples(dims(1, 6), dims(1, 6))
NONEMPTY_SQUARE = dims(1, 6).map(lambda n: (n, n))
SANE_RTOL = st.sampled_from([None, 0.0, 1e-12, 1e-3, 0.5])
SANE_GAP = st.sampled_from([1e3, 10.0, 1.5, 1e12])
SANE_INPUT_DTYPE = st.sampled_from(["float32", "float64"])


def _cap(s: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(Capsule, s, versioned=st.booleans())


@st.composite
def _sane_fisher(draw: Any, core: bool) -> tuple[Any, Any]:
    n, t, d_in, d_out = draw(dims(1, 5)), draw(dims(1, 3)), draw(dims(1, 5)), draw(dims(1, 5))
    seq = draw(st.booleans())
    lib = (draw(st.sampled_from(LIBS)),)
    a = draw(valid_arr(st.just((n, t, d_in) if seq else (n, d_in)), libs=lib))
    g = draw(valid_arr(st.just((n, t, d_out) if seq else (n, d_out)), libs=lib))
    return (Capsule(a), Capsule(g)) if core else (a, g)


@st.composite
def _sane_xy(draw: Any, lists: bool) -> tuple[Any, Any]:
    k = draw(dims(2, 9))
    kw = {"libs": ("list",) if lists else ("list", "numpy", "torch"),
          "fills": ("arange", "normal", "uniform")}
    return draw(valid_arr(st.just((k,)), **kw)), draw(valid_arr(st.just((k,)), **kw))


@st.composite
def _sane_logdet(draw: Any, libs: tuple[str, ...]) -> tuple[Any, int]:
    k = draw(dims(1, 8))
    values = draw(valid_arr(st.just((k,)), fills=("desc",), libs=libs))
    return values, draw(st.integers(0, k))


def _sane_accumulator(entry: str, core: bool) -> st.SearchStrategy:
    @st.composite
    def one(draw: Any) -> Case:
        h = draw(dims(1, 5))
        batch = valid_arr(st.tuples(dims(0, 5), st.just(h)))
        batch = _cap(batch) if core else batch
        op = st.one_of(
            st.tuples(st.just("add"), batch),
            st.tuples(st.just("add"), batch),
            st.tuples(st.just("merge"), st.just(h), st.lists(batch, max_size=2).map(tuple)),
            st.tuples(st.just("gram"), st.booleans()),
            st.sampled_from([("mean",), ("count",)]),
        )
        ops = tuple(draw(st.lists(op, min_size=1, max_size=5)))
        return Case(entry, (h,), {}, ops + (("gram", False), ("gram", True), ("mean",)))

    return one()


def _sane_ops() -> dict[str, st.SearchStrategy]:
    side = st.sampled_from(["auto", "feature", "sample"])
    route = st.sampled_from(["auto", "block-sum", "materialize"])
    sym = valid_arr(NONEMPTY_SQUARE, fills=("psd", "psd", "sym", "lowrank", "zeros"))
    psd = valid_arr(NONEMPTY_SQUARE, fills=("psd", "psd", "lowrank", "zeros"))
    spec_kw = kwargs(rtol=SANE_RTOL, gap_ratio=SANE_GAP, vectors=st.booleans(),
                     input_dtype=SANE_INPUT_DTYPE, rtol_size=st.sampled_from([None, 1, 100]))
    core_spec_kw = kwargs(rtol=st.sampled_from([-1.0, 0.0, 1e-3, 0.5]), gap_ratio=SANE_GAP,
                          vectors=st.booleans(), input_dtype=SANE_INPUT_DTYPE,
                          rtol_size=st.sampled_from([0, 1, 100]))
    eig = valid_arr(dims(1, 8).map(lambda n: (n,)), fills=("desc", "uniform", "normal"),
                    libs=("numpy", "torch", "list"))
    eig_np = valid_arr(dims(1, 8).map(lambda n: (n,)), fills=("desc", "uniform", "normal"),
                       libs=("numpy", "list"))
    eig_kw = kwargs(rtol=SANE_RTOL, gap_ratio=SANE_GAP, input_dtype=SANE_INPUT_DTYPE,
                    rtol_size=st.sampled_from([None, 1, 100]))
    core_eig_kw = kwargs(rtol=st.sampled_from([-1.0, 0.0, 0.5]), gap_ratio=SANE_GAP,
                         input_dtype=SANE_INPUT_DTYPE, rtol_size=st.sampled_from([0, 1, 100]))
    sizes = st.tuples(dims(1, 64), dims(1, 8), dims(1, 64), dims(1, 64))
    method = st.sampled_from(["ols", "theil-sen"])
    grads = valid_arr(st.one_of(NONEMPTY, st.tuples(dims(1, 4), dims(1, 3), dims(1, 3))))
    return {
        "gram": case("gram", st.tuples(valid_arr(NONEMPTY)),
                     kwargs(side=side, center=st.booleans())),
        "fisher_gram": case("fisher_gram", _sane_fisher(False),
                            kwargs(bias=st.booleans(), route=route)),
        "fisher_gram_from_grads": case("fisher_gram_from_grads", st.tuples(grads)),
        "sym_eig": case("sym_eig", st.tuples(sym), kwargs(vectors=st.booleans())),
        "spectrum": case("spectrum", st.tuples(psd), spec_kw),
        "spectrum_from_eigenvalues": case("spectrum_from_eigenvalues", st.tuples(eig), eig_kw),
        "logdet_top": case("logdet_top", _sane_logdet(("numpy", "torch", "list"))),
        "fit_slope": case("fit_slope", _sane_xy(False), kwargs(method=method)),
        "GramAccumulator": _sane_accumulator("GramAccumulator", core=False),
        "misc": case("misc", st.one_of(
            st.sampled_from([("build_info",), ("num_threads",), ("set_num_threads", 1),
                             ("set_num_threads", 2), ("set_num_threads", "auto")]),
            st.tuples(st.just("default_rtol"), SANE_INPUT_DTYPE, dims(1, 100)),
            st.tuples(st.just("fisher_route"), *(dims(1, 64),) * 4))),
        "_core.gram": case("_core.gram", st.tuples(_cap(valid_arr(NONEMPTY))),
                           kwargs(side=side, center=st.booleans())),
        "_core.resolve_gram_side": case("_core.resolve_gram_side",
                                        st.tuples(dims(1, 99), dims(1, 99), side)),
        "_core.fisher_gram": case("_core.fisher_gram", _sane_fisher(True),
                                  kwargs(bias=st.booleans(), route=route,
                                         chunk_bytes=st.sampled_from([1 << 28, 64, 1]))),
        "_core.fisher_gram_from_grads": case("_core.fisher_gram_from_grads",
                                             st.tuples(_cap(grads))),
        "_core.fisher_route": case("_core.fisher_route", st.builds(
            lambda t, r: (*t, r), sizes, route)),
        "_core.fisher_gram_cost": case("_core.fisher_gram_cost", sizes),
        "_core.sym_eig": case("_core.sym_eig", st.tuples(_cap(sym)),
                              kwargs(vectors=st.booleans())),
        "_core.spectrum": case("_core.spectrum", st.tuples(_cap(psd)), core_spec_kw),
        "_core.spectrum_from_eigenvalues": case("_core.spectrum_from_eigenvalues",
                                                st.tuples(eig_np), core_eig_kw),
        "_core.logdet_top": case("_core.logdet_top", _sane_logdet(("numpy", "list"))),
        "_core.default_rtol": case("_core.default_rtol",
                                   st.tuples(SANE_INPUT_DTYPE, dims(1, 100))),
        "_core.fit_slope": case("_core.fit_slope", _sane_xy(True), kwargs(method=method)),
        "_core.dlpack_data_ptr": case("_core.dlpack_data_ptr",
                                      st.tuples(_cap(valid_arr(NONEMPTY)))),
        "_core.noargs": case("_core.noargs", st.sampled_from(
            [("build_info",), ("eig_backend",), ("num_threads",), ("set_num_threads", 1),
             ("threads_in_use",), ("set_num_threads_auto",), ("openmp_runtime",)])),
        "_core.GramAccumulator": _sane_accumulator("_core.GramAccumulator", core=True),
    }


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------
def _strategies() -> dict[str, st.SearchStrategy]:
    g_sq = or_wrong(matrices(SQUARE, fills=EIG_FILLS))
    spec_kw = kwargs(rtol=RTOL, gap_ratio=GAP, vectors=BOOL, input_dtype=INPUT_DTYPE,
                     rtol_size=RTOL_SIZE)
    core_spec_kw = kwargs(rtol=floats_or(-1.0, 0.0, 0.5), gap_ratio=GAP, vectors=BOOL,
                          input_dtype=INPUT_DTYPE, rtol_size=ints_or(0, 1))
    eig_kw = kwargs(rtol=RTOL, gap_ratio=GAP, input_dtype=INPUT_DTYPE, rtol_size=RTOL_SIZE)
    core_sq = capsules(matrices(SQUARE, fills=EIG_FILLS))
    route = st.sampled_from(["auto", "block-sum", "materialize", "bogus", None])
    return {
        "gram": case("gram", st.tuples(or_wrong(matrices())), kwargs(side=SIDE, center=BOOL)),
        "fisher_gram": case("fisher_gram", fisher_gram_args(),
                            kwargs(bias=BOOL, route=route)),
        "fisher_gram_from_grads": case("fisher_gram_from_grads", st.tuples(or_wrong(matrices(
            st.one_of(MATRIX, st.sampled_from([(3, 2, 2), (2, 1, 1, 1)])))))),
        "sym_eig": case("sym_eig", st.tuples(g_sq), kwargs(vectors=BOOL)),
        "spectrum": case("spectrum", st.tuples(g_sq), spec_kw),
        "spectrum_from_eigenvalues": case("spectrum_from_eigenvalues",
                                          st.tuples(eigenvalues()), eig_kw),
        "logdet_top": case("logdet_top", st.tuples(eigenvalues(), ints_or(0, 1, 2, 2.5, None))),
        "fit_slope": case("fit_slope", slope_xy(), kwargs(method=METHOD)),
        "GramAccumulator": accumulator("GramAccumulator", core=False),
        "misc": case("misc", MISC),
        "read": read_case(),
        "approach_slope": approach_case(),
        "direction_order": order_case(),
        "classify_directions": classify_case(),
        "gauge_directions": gauge_directions_case(),
        "gauges.discover": discover_case(),
        "gauges.check": gauge_check_case(),
        "optim.DDCAdam": optim_case("optim.DDCAdam", SANE_ADAM, ADAM_OPTIONS),
        "optim.DDCMuon": optim_case("optim.DDCMuon", SANE_MUON, MUON_OPTIONS),
        "llc.estimate": llc_case(),
        "monitor.DeadDirectionMonitor": monitor_case(),
        "cli.main": cli_case(),
        "_core.gram": case("_core.gram", st.tuples(capsules(matrices())),
                           kwargs(side=SIDE, center=BOOL)),
        "_core.resolve_gram_side": case("_core.resolve_gram_side",
                                        st.tuples(ints_or(), ints_or(), SIDE)),
        "_core.fisher_gram": case("_core.fisher_gram", fisher_gram_args(core=True),
                                  kwargs(bias=BOOL, route=route,
                                         chunk_bytes=ints_or(268435456, 1, 64))),
        "_core.fisher_gram_from_grads": case("_core.fisher_gram_from_grads",
                                             st.tuples(capsules(matrices()))),
        "_core.fisher_route": case("_core.fisher_route", st.tuples(
            ints_or(), ints_or(), ints_or(), ints_or(), route)),
        "_core.fisher_gram_cost": case("_core.fisher_gram_cost", st.tuples(
            ints_or(), ints_or(), ints_or(), ints_or())),
        "_core.sym_eig": case("_core.sym_eig", st.tuples(core_sq), kwargs(vectors=BOOL)),
        "_core.spectrum": case("_core.spectrum", st.tuples(core_sq), core_spec_kw),
        "_core.spectrum_from_eigenvalues": case(
            "_core.spectrum_from_eigenvalues", st.tuples(eigenvalues(("numpy", "list"))),
            kwargs(rtol=floats_or(-1.0, 0.0), gap_ratio=GAP, input_dtype=INPUT_DTYPE,
                   rtol_size=ints_or(0))),
        "_core.logdet_top": case("_core.logdet_top", st.tuples(eigenvalues(("numpy", "list")),
                                                               ints_or(0, 1, 2))),
        "_core.default_rtol": case("_core.default_rtol", st.tuples(INPUT_DTYPE, ints_or(1, 100))),
        "_core.fit_slope": case("_core.fit_slope", slope_xy(), kwargs(method=METHOD)),
        "_core.dlpack_data_ptr": case("_core.dlpack_data_ptr", st.tuples(capsules(matrices()))),
        "_core.noargs": case("_core.noargs", NOARGS),
        "_core.GramAccumulator": accumulator("_core.GramAccumulator", core=True),
        "_core.ddc_adam_update": adam_update_case(),
        "_core.ddc_adam_update_many": blocks_case("_core.ddc_adam_update_many", split=False),
        "_core.DDCAdamPlan": blocks_case("_core.DDCAdamPlan", split=False),
        "_core.DDCSplitPlan": blocks_case("_core.DDCSplitPlan", split=False),
        "_core.ddc_split_units": split_units_case(),
        "_core.ddc_split_sums": blocks_case("_core.ddc_split_sums", split=True),
        "_core.ddc_split_moments": blocks_case("_core.ddc_split_moments", split=True),
        "_core.ddc_split_apply": blocks_case("_core.ddc_split_apply", split=True),
        "_core.ddc_row_norms": row_norms_case(),
        "_core.ddc_gauge_dots": gauge_dots_case(),
    }


def _tiered() -> dict[str, st.SearchStrategy]:
    wild, sane = _strategies(), _sane_ops()
    return {e: tiers(sane[e], s) if e in sane else s for e, s in wild.items()}


STRATEGIES = _tiered()
ENTRY_NAMES = tuple(STRATEGIES)

#: The model-level entries (forward/backward passes, eigendecompositions) and, among them, the
#: expensive ones (sweeps over a grid of t, SGLD chains, files and checkpoints, repeated
#: readings). Every other entry is an op or a binding (milliseconds).
MODEL = {"read", "gauge_directions", "gauges.discover", "gauges.check", "optim.DDCAdam",
         "optim.DDCMuon"}
EXPENSIVE = {"llc.estimate", "cli.main", "monitor.DeadDirectionMonitor", "approach_slope",
             "classify_directions", "direction_order"}

#: Named sizes: inputs per entry for (ops and bindings, model-level, expensive) entries.
#: ci: 576 planned (~540 run: repeated draws are dropped); medium: ~10⁴; long: 4.2·10⁵ planned
#: (~3.9·10⁵ run). Measured rates and times: tests/python/test_fuzz.py.
SIZES = {"ci": (12, 16, 16), "medium": (200, 300, 300), "long": (11000, 7000, 5000)}


def plan(size: str | int, entries: list[str] | None = None) -> dict[str, int]:
    """Cases per entry for a size name, or for a total number of inputs (shared in the
    proportions of ``"medium"``)."""
    names = list(entries) if entries else list(ENTRY_NAMES)
    unknown = sorted(set(names) - set(ENTRY_NAMES))
    if unknown:
        raise ValueError(f"fuzz: unknown entries {unknown}; known: {list(ENTRY_NAMES)}")

    def tier(e: str) -> int:
        return 2 if e in EXPENSIVE else 1 if e in MODEL else 0

    if isinstance(size, str) and size in SIZES:
        return {e: SIZES[size][tier(e)] for e in names}
    total = int(size)
    w = {e: SIZES["medium"][tier(e)] for e in names}
    unit = total / sum(w.values())
    return {e: max(3, round(unit * w[e])) for e in names}


def generate(entry: str, n: int) -> list[Case]:
    """``n`` cases of one entry: its explicit examples (:data:`fuzz.examples.EXAMPLES`), then
    generated ones, the same on every run (``derandomize=True``, no database, no shrinking:
    outcomes are recorded, never raised), without repeats. Fewer than ``n`` when hypothesis
    repeats itself or exhausts the strategy's space (a few percent at the long size)."""
    from fuzz.examples import EXAMPLES

    out: list[Case] = list(EXAMPLES.get(entry, ()))[:n]

    @settings(
        max_examples=max(n - len(out), 1),
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(STRATEGIES[entry])
    def collect(c: Case) -> None:
        out.append(c)

    if n > len(out):
        collect()
    unique = list({repr(c): c for c in out}.values())  # hypothesis repeats some draws
    return unique[:n]
