"""Worker side: turn specs (:mod:`fuzz.specs`) into arrays, tensors, models, losses and files.

Imported only in the worker child (it imports torch and deadspec). :class:`Context` collects
every input it builds, so the worker can tell whether all inputs were finite, and hashes the
input files of a command-line case, so it can tell whether the call wrote over one.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import deadspec
from deadspec import models
from fuzz.specs import SPECIAL, Arr, Capsule, Direction, Fn, Layer, Loss, Model, Num, Obj

TORCH_DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
    "complex64": torch.complex64,
    "complex128": torch.complex128,
}


class UserLossError(KeyError):
    """Raised by the ``Loss("raises")`` loss: the user's own error, which deadspec must let
    through unchanged (it counts as a clean error)."""


# ---------------------------------------------------------------------------------------------
# Arrays
# ---------------------------------------------------------------------------------------------
def _fill(spec: Arr, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    f, s = spec.fill, spec.scale
    square = len(shape) == 2 and shape[0] == shape[1]
    with np.errstate(all="ignore"):
        if f == "zeros":
            return np.zeros(shape)
        if f in ("ones", "const"):
            return np.full(shape, float(s))
        if f == "arange":
            return np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape) * s
        if f == "uniform":
            return rng.uniform(0.0, 1.0, shape) * s
        if f == "int":
            return rng.integers(0, max(int(min(abs(s), 2**31)), 1), shape).astype(np.float64)
        if f == "psd" and square:
            k = max(shape[0] // 2, 1)
            x = rng.standard_normal((shape[0], k))
            return (x @ x.T / k) * s
        if f == "sym" and square:
            a = rng.standard_normal(shape)
            return (a + a.T) / 2 * s
        if f == "desc":
            v = np.abs(rng.standard_normal(shape)) * s
            return -np.sort(-v.reshape(-1)).reshape(shape) if v.ndim else v
        if f == "lowrank" and len(shape) == 2:
            return np.outer(rng.standard_normal(shape[0]), rng.standard_normal(shape[1])) * s
        return rng.standard_normal(shape) * s


def _inject(a: np.ndarray, special: tuple[tuple[int, str], ...]) -> np.ndarray:
    if not special or a.size == 0:
        return a
    flat = a.reshape(-1).copy()
    for idx, name in special:
        flat[int(idx) % flat.size] = SPECIAL[name]
    return flat.reshape(a.shape)


def _numpy_cast(a: np.ndarray, dtype: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        if dtype == "bool":
            return a != 0
        if dtype == "bfloat16":  # numpy has none: the nearest numpy stand-in
            return a.astype(np.float32)
        return a.astype(np.dtype(dtype))


def _torch_cast(a: np.ndarray, dtype: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    if dtype == "bool":
        return t != 0
    if TORCH_DTYPES[dtype] in (torch.int64, torch.int32, torch.uint8):
        with np.errstate(all="ignore"):
            return torch.from_numpy(_numpy_cast(a, dtype).copy())
    return t.to(TORCH_DTYPES[dtype])


def _layout_numpy(a: np.ndarray, layout: str) -> np.ndarray:
    if a.ndim == 0 or a.size == 0:
        return a
    if layout == "T" and a.ndim >= 2:
        return np.ascontiguousarray(a.T).T
    if layout == "strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), dtype=a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "reversed":
        return a[::-1].copy()[::-1]
    if layout == "broadcast":
        return np.broadcast_to(a[:1], a.shape)
    if layout == "offset":
        big = np.zeros(a.size + 3, dtype=a.dtype)
        big[3:] = a.reshape(-1)
        return big[3:].reshape(a.shape)
    return a


def _layout_torch(t: torch.Tensor, layout: str) -> torch.Tensor:
    if t.ndim == 0 or t.numel() == 0:
        return t
    if layout == "T" and t.ndim >= 2:
        return t.mT.contiguous().mT
    if layout in ("strided", "reversed"):
        big = torch.zeros(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    if layout == "fortran" and t.ndim >= 2:
        perm = tuple(range(t.ndim - 1, -1, -1))
        return t.permute(perm).contiguous().permute(perm)
    if layout == "broadcast":
        return t[:1].expand(t.shape)
    if layout == "offset":
        big = torch.zeros(t.numel() + 3, dtype=t.dtype)
        big[3:] = t.reshape(-1)
        return big[3:].view(t.shape)
    if layout == "grad" and (t.is_floating_point() or t.is_complex()):
        return t.clone().requires_grad_(True)
    return t


def make_array(spec: Arr) -> Any:
    rng = np.random.default_rng(spec.seed)
    shape = tuple(int(d) for d in spec.shape)
    base = _inject(np.asarray(_fill(spec, shape, rng), dtype=np.float64), spec.special)
    if spec.lib == "torch":
        return _layout_torch(_torch_cast(base, spec.dtype), spec.layout)
    arr = _layout_numpy(_numpy_cast(base, spec.dtype), spec.layout)
    if spec.lib == "list":
        return arr.tolist()
    return arr


# ---------------------------------------------------------------------------------------------
# Models, losses, callables
# ---------------------------------------------------------------------------------------------
class TupleOut(nn.Module):
    """A model whose output is a tuple (not a tensor)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.fc(x)
        return y, y


def _model_module(spec: Model) -> nn.Module:
    w = list(spec.widths)
    if spec.kind == "mlp":
        return models.mlp(w, activation=spec.act, bias=spec.bias)
    if spec.kind == "mlp_ln":
        return nn.Sequential(
            nn.Linear(w[0], w[1], bias=spec.bias),
            nn.ReLU(),
            nn.Linear(w[1], w[1], bias=spec.bias),
            nn.LayerNorm(w[1]),
            nn.Linear(w[1], w[-1], bias=spec.bias),
        )
    if spec.kind == "transformer":
        return models.ModAddTransformer(
            p=w[0], d_model=w[1], n_heads=w[2], d_mlp=2 * w[1], layernorm=spec.layernorm
        )
    if spec.kind == "rrr":
        return models.ReducedRankRegression(w[0], w[-1], w[1], bias=spec.bias)
    if spec.kind == "conv":
        return nn.Sequential(
            nn.Conv1d(w[0], w[1], 3, padding=1, bias=spec.bias),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(w[1] * 4, w[-1], bias=spec.bias),
        )
    if spec.kind == "noparams":
        return nn.Sequential(nn.ReLU())
    if spec.kind == "tuple_out":
        return TupleOut(w[0], w[-1])
    raise AssertionError(f"fuzz: unknown model kind {spec.kind!r}")


def make_model(spec: Model) -> nn.Module:
    torch.manual_seed(spec.seed)
    m = _model_module(spec).to(TORCH_DTYPES[spec.dtype])
    params = list(m.parameters())
    with torch.no_grad():
        for p in params:
            p.mul_(spec.init_scale)
        if spec.dead and params and params[0].ndim >= 2:
            first = params[0]
            for u in spec.dead:
                first[u % first.shape[0]].zero_()
                if len(params) > 1 and params[1].ndim == 1 and params[1].shape[0] == first.shape[0]:
                    params[1][u % first.shape[0]] = 0.0
        if spec.special and params:
            total = sum(p.numel() for p in params)
            for idx, name in spec.special:
                k = int(idx) % total
                for p in params:
                    if k < p.numel():
                        value = torch.tensor(SPECIAL[name], dtype=torch.float64)
                        p.view(-1)[k] = value.to(p.dtype)  # 1e300 -> inf in float32
                        break
                    k -= p.numel()
    return m


def make_loss(spec: Loss) -> Any:
    n = spec.name
    table = {
        "ce": lambda: nn.CrossEntropyLoss(reduction="none"),
        "mse": lambda: nn.MSELoss(reduction="none"),
        "bce": lambda: nn.BCEWithLogitsLoss(reduction="none"),
        "l1": lambda: nn.L1Loss(reduction="none"),
        "ce_mean": lambda: nn.CrossEntropyLoss(),
        "mse_mean": lambda: nn.MSELoss(),
        "token_ce": lambda: deadspec.TokenCrossEntropy(),
        "gauss": lambda: deadspec.llc.gaussian_nll(spec.sigma),
        "ce_nll": lambda: deadspec.llc.cross_entropy_nll,
        "notcallable": lambda: 3,
    }
    if n in table:
        return table[n]()
    if n == "nan":
        return lambda out, y: out.reshape(out.shape[0], -1).sum(-1) * float("nan")
    if n == "transposed":
        return lambda out, y: out.reshape(out.shape[0], -1).sum(-1)[None, :]
    if n == "raises":

        def raising(out: Any, y: Any) -> Any:
            raise UserLossError("the user's loss failed")

        return raising
    raise AssertionError(f"fuzz: unknown loss {n!r}")


def make_fn(spec: Fn, ctx: Context) -> Any:
    if spec.name == "approach_norm":
        return lambda m: float(sum(float(p.detach().double().norm()) ** 2 for p in m.parameters()))
    if spec.name == "approach_const":
        return lambda m: 1.0
    if spec.name == "approach_nan":
        return lambda m: float("nan")
    if spec.name == "path_line":
        model = ctx.model

        def path(t: float) -> dict[str, torch.Tensor]:
            name, p = next(iter(model.named_parameters()))
            return {name: p.detach() * (1.0 + t)}

        return path
    raise AssertionError(f"fuzz: unknown fn {spec.name!r}")


def make_obj(spec: Obj) -> Any:
    n = spec.name
    if n == "object":
        return object()
    if n == "dict":
        return {"a": 1}
    if n == "set":
        return {1, 2}
    if n == "generator":
        return (i for i in range(3))
    if n == "bytes":
        return b"\x00\x01"
    if n == "model":
        return nn.Linear(2, 2)
    if n == "tensor_cuda":
        return torch.zeros(3, 3, device="meta")
    if n.startswith("dtype_"):
        return TORCH_DTYPES[n[6:]]
    raise AssertionError(f"fuzz: unknown obj {n!r}")


def make_direction(spec: Direction, model: Any) -> Any:
    params = list(model.named_parameters()) if isinstance(model, nn.Module) else []
    total = sum(p.numel() for _, p in params)
    g = torch.Generator().manual_seed(spec.seed)

    def vec(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        v = torch.zeros(n, dtype=torch.float64)
        if spec.fill != "zeros":
            v = torch.randn(n, generator=g, dtype=torch.float64) * spec.scale
        for idx, name in spec.special:
            if n:
                v[int(idx) % n] = SPECIAL[name]
        return v.to(dtype)

    if spec.form == "flat":
        return vec(total)
    if spec.form == "wronglen":
        return vec(total + 1)
    if spec.form == "badname":
        return {"nope": vec(3)}
    kept = params[: max(spec.keep, 0)]
    return {n: vec(p.numel(), p.dtype).reshape(p.shape) for n, p in kept}


def resolve_layer(spec: Layer, model: Any) -> Any:
    if spec.name is not None:
        return spec.name
    if not isinstance(model, nn.Module):
        return str(spec.index)
    names = [
        n
        for n, m in model.named_modules()
        if not spec.linear_only or isinstance(m, nn.Linear)
    ]
    return names[spec.index % len(names)] if names else ""


# ---------------------------------------------------------------------------------------------
# Context: builds values, remembers inputs and input files
# ---------------------------------------------------------------------------------------------
class Context:
    """Builds one case's inputs and keeps what is needed to classify its outcome."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.finite = True  # every array, tensor, model and float built so far was finite
        self.model: Any = None
        self.input_files: dict[str, bytes] = {}

    def build(self, spec: Any) -> Any:
        if isinstance(spec, Arr):
            a = make_array(spec)
            self.add_input(a)
            return a
        if isinstance(spec, Num):
            self.add_input(spec.value)
            return spec.value
        if isinstance(spec, Capsule):
            a = make_array(spec.arr)
            self.add_input(a)
            return capsule(a, spec.versioned, spec.used)
        if isinstance(spec, Model):
            m = make_model(spec)
            self.add_input(m)
            if self.model is None:
                self.model = m
            return m
        if isinstance(spec, Layer):
            return resolve_layer(spec, self.model)
        if isinstance(spec, Direction):
            d = make_direction(spec, self.model)
            self.add_input(d)
            return d
        if isinstance(spec, Loss):
            return make_loss(spec)
        if isinstance(spec, Fn):
            return make_fn(spec, self)
        if isinstance(spec, Obj):
            return make_obj(spec)
        if isinstance(spec, tuple):
            return tuple(self.build(s) for s in spec)
        if isinstance(spec, list):
            return [self.build(s) for s in spec]
        if isinstance(spec, Mapping):
            return {k: self.build(v) for k, v in spec.items()}
        if isinstance(spec, float):
            self.add_input(spec)
        return spec

    # -- finiteness --------------------------------------------------------------------------
    def add_input(self, x: Any) -> None:
        """Note an input; its finiteness is taken now, before the call can write into it (an
        optimizer step, an in-place kernel)."""
        self.finite = self.finite and is_finite(x)

    def inputs_finite(self) -> bool:
        return self.finite

    # -- files -------------------------------------------------------------------------------
    def remember_file(self, path: Path) -> None:
        self.input_files[str(path)] = digest(path)

    def changed_files(self) -> list[str]:
        return [p for p, h in self.input_files.items() if digest(Path(p)) != h]


def capsule(a: Any, versioned: bool = False, used: bool = False) -> Any:
    """The DLPack capsule of an array or tensor (the object itself when it has none)."""
    if isinstance(a, torch.Tensor) and a.requires_grad:
        a = a.detach()
    if not hasattr(a, "__dlpack__"):
        return a
    try:
        cap = a.__dlpack__(max_version=(1, 0)) if versioned else a.__dlpack__()
    except (BufferError, TypeError, RuntimeError):
        return a  # not exportable (a read-only numpy view, a bool tensor): pass the object
    if used:
        try:
            deadspec._core.dlpack_data_ptr(cap)
        except Exception:  # noqa: BLE001 - the capsule stays unused; still a valid input
            pass
    return cap


def digest(path: Path) -> bytes:
    """A fingerprint of a file or folder (its bytes, or its sorted entries' names and bytes);
    ``b"missing"`` when it no longer exists."""
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).digest()
    if path.is_dir():
        h = hashlib.sha256(b"dir")
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode())
            if p.is_file():
                h.update(p.read_bytes())
        return h.digest()
    return b"missing"


def is_finite(x: Any) -> bool:
    """Whether every number in x is finite (arrays, tensors, models' parameters and buffers,
    floats, containers, dataclasses); other objects count as finite."""
    if isinstance(x, torch.Tensor):
        if x.device.type == "meta" or not (x.is_floating_point() or x.is_complex()):
            return True
        return bool(torch.isfinite(x.detach()).all())
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "fc":
            return True
        with np.errstate(all="ignore"):
            return bool(np.isfinite(x).all())
    if isinstance(x, nn.Module):
        return all(is_finite(p) for p in x.parameters()) and all(
            is_finite(b) for b in x.buffers()
        )
    if isinstance(x, (float, np.floating)):
        return bool(np.isfinite(x))
    if isinstance(x, (list, tuple)):
        return all(is_finite(v) for v in x)
    if isinstance(x, Mapping):
        return all(is_finite(v) for v in x.values())
    return True


# ---------------------------------------------------------------------------------------------
# Files of command-line cases
# ---------------------------------------------------------------------------------------------
_FACTORY = """import torch
from deadspec.models import mlp


def make():
    torch.manual_seed(0)
    return mlp({widths!r})
"""


def _state(widths: tuple[int, ...], seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return models.mlp(list(widths)).state_dict()


def _data(widths: tuple[int, ...], seed: int, targets: str) -> dict[str, torch.Tensor]:
    n, d_in, d_out = (list(widths) + [2, 3, 2])[:3]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    if targets == "int":
        y = torch.randint(0, max(d_out, 1), (n,), generator=g)
    elif targets == "float":
        y = torch.randn(n, d_out, generator=g)
    else:
        return {"inputs": x}
    return {"inputs": x, "targets": y}


def write_file(path: Path, kind: str, widths: tuple[int, ...], seed: int, targets: str) -> None:
    if kind == "factory":
        path.write_text(_FACTORY.format(widths=list(widths)))
    elif kind in ("ckpt", "ckpt_wrapped", "ckpt_prefix", "ckpt_wrongkeys", "ckpt_wrongshape"):
        sd = _state(widths, seed)
        if kind == "ckpt_wrapped":
            sd = {"state_dict": sd}
        elif kind == "ckpt_prefix":
            sd = {f"model.{k}": v for k, v in sd.items()}
        elif kind == "ckpt_wrongkeys":
            sd = {f"x{k}": v for k, v in sd.items()}
        elif kind == "ckpt_wrongshape":
            sd = {k: torch.zeros(v.numel() + 1) for k, v in sd.items()}
        torch.save(sd, path)
    elif kind == "safetensors":
        from safetensors.torch import save_file

        save_file(_state(widths, seed), str(path))
    elif kind in ("data_pt", "data_nan", "data_badtargets"):
        d = _data(widths, seed, targets)
        if kind == "data_nan":
            d["inputs"][0, 0] = float("nan")
        if kind == "data_badtargets" and "targets" in d:
            d["targets"] = d["targets"][:-1]
        torch.save(d, path)
    elif kind == "data_npz":
        d = _data(widths, seed, targets)
        np.savez(path, **{k: v.numpy() for k, v in d.items()})
    elif kind == "data_tensor":
        torch.save(_data(widths, seed, targets)["inputs"], path)
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(seed).bytes(64))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "dir":
        path.mkdir()
    elif kind == "csv":
        path.write_text("user,data\n1,2\n")
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"inputs": os.getcwd}))
    else:
        raise AssertionError(f"fuzz: unknown file kind {kind!r}")
