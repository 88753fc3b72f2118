"""Reference transformers for deadspec's transformer readings.

- :class:`SelfAttention`: multi-head (causal) self-attention with four separate ``nn.Linear``
  projections ``q``, ``k``, ``v``, ``o``, so every head is a slice of a named layer: head h of
  ``q``/``k``/``v`` is the block of output rows ``h·d_head:(h+1)·d_head`` of the weight, head h
  of ``o`` the same block of input columns (:meth:`SelfAttention.deadspec_heads` tells
  :func:`deadspec.read` so, for ``heads=True``).
- :class:`TransformerBlock`: a pre-LN block ``x + attn(ln1(x))``, then ``x + mlp(ln2(x))`` with a
  ReLU MLP ``mlp.fc_in -> mlp.act -> mlp.fc_out``; optional RoPE on q and k.
- :class:`ModAddTransformer`: the one-layer modular-addition transformer of Nanda et al.
  (inputs ``a b =`` as 3 tokens, embed + learned positions, one block, unembed, logits read at
  the last position).

All models are plain ``torch.nn`` modules; nothing here touches the C++ core. The attention is
written out (no fused kernels), so ``torch.func`` transforms (``vmap``, ``jvp``, ``grad``) work.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from deadspec._limits import MAX_PARAMETERS, MAX_SAMPLES, check_at_most

__all__ = ["ModAddTransformer", "SelfAttention", "TransformerBlock", "modadd_data"]


def _pos_int(fn: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"deadspec.{fn}: {name} must be a positive integer, got {type(value).__name__} "
            f"{value!r}"
        )
    if value < 1:
        raise ValueError(f"deadspec.{fn}: {name} must be a positive integer, got {value}")
    return int(value)


def _rope(x: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotary embedding on interleaved pairs (2i, 2i+1) of the last axis; x is (N, H, T, d)."""
    t, d = x.shape[-2], x.shape[-1]
    half = d // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64, device=x.device) * 2.0 / d)
    ang = torch.arange(t, dtype=torch.float64, device=x.device)[:, None] * freqs[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate ``q``, ``k``, ``v``, ``o`` projections.

    Parameters
    ----------
    d_model : int
        Width of the residual stream.
    n_heads : int
        Number of heads; must divide ``d_model`` (``d_head = d_model // n_heads``).
    rope : bool
        Rotary position embedding on q and k (interleaved pairs; needs an even ``d_head``).
    causal : bool
        Causal mask (position t attends to positions ≤ t).
    bias : bool
        Biases on the four projections.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        *,
        rope: bool = False,
        causal: bool = True,
        bias: bool = True,
    ) -> None:
        super().__init__()
        fn = "SelfAttention"
        self.d_model = _pos_int(fn, "d_model", d_model)
        self.n_heads = _pos_int(fn, "n_heads", n_heads)
        if self.d_model % self.n_heads:
            raise ValueError(
                f"deadspec.{fn}: n_heads must divide d_model, got d_model={d_model}, "
                f"n_heads={n_heads}"
            )
        self.d_head = self.d_model // self.n_heads
        if rope and self.d_head % 2:
            raise ValueError(f"deadspec.{fn}: rope needs an even d_head, got {self.d_head}")
        self.rope = bool(rope)
        self.causal = bool(causal)
        self.q = nn.Linear(d_model, d_model, bias=bias)
        self.k = nn.Linear(d_model, d_model, bias=bias)
        self.v = nn.Linear(d_model, d_model, bias=bias)
        self.o = nn.Linear(d_model, d_model, bias=bias)

    def deadspec_heads(self) -> dict[str, tuple[str, int]]:
        """Head layout for :func:`deadspec.read` with ``heads=True``.

        Returns
        -------
        dict
            ``child name -> ("out" | "in", n_heads)``: head h is the h-th block of the
            projection's output rows (q, k, v) or input columns (o).
        """
        h = self.n_heads
        return {"q": ("out", h), "k": ("out", h), "v": ("out", h), "o": ("in", h)}

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        n, t, _ = x.shape
        return x.reshape(n, t, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3:
            raise ValueError(
                f"deadspec.SelfAttention: input must be (N, T, d_model), got {tuple(x.shape)}"
            )
        n, t, _ = x.shape
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        if self.rope:
            q, k = _rope(q), _rope(k)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        if self.causal:
            mask = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(mask, float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        z = (attn @ v).transpose(1, 2).reshape(n, t, self.d_model)
        return self.o(z)

    def extra_repr(self) -> str:
        return (
            f"d_model={self.d_model}, n_heads={self.n_heads}, rope={self.rope}, "
            f"causal={self.causal}"
        )


class _MLP(nn.Module):
    def __init__(self, d_model: int, d_mlp: int, bias: bool) -> None:
        super().__init__()
        self.fc_in = nn.Linear(d_model, d_mlp, bias=bias)
        self.act = nn.ReLU()
        self.fc_out = nn.Linear(d_mlp, d_model, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(self.act(self.fc_in(x)))


class TransformerBlock(nn.Module):
    """Pre-LN transformer block with separate q/k/v/o projections and a ReLU MLP.

    ``x <- x + attn(ln1(x)); x <- x + mlp(ln2(x))``. Module names: ``ln1``, ``attn.q``,
    ``attn.k``, ``attn.v``, ``attn.o``, ``ln2``, ``mlp.fc_in``, ``mlp.act``, ``mlp.fc_out``
    (no ``ln1``/``ln2`` with ``layernorm=False``).

    Parameters
    ----------
    d_model, n_heads : int
        Residual width and number of heads (``n_heads`` divides ``d_model``).
    d_mlp : int, optional
        MLP width; default ``4·d_model``.
    rope : bool
        Rotary position embedding on q and k.
    layernorm : bool
        Pre-LN (True) or no normalisation (False, the modular-addition recipe).
    causal : bool
        Causal attention mask.
    attn_bias, mlp_bias : bool
        Biases on the attention projections and on the MLP layers.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_mlp: int | None = None,
        rope: bool = False,
        *,
        layernorm: bool = True,
        causal: bool = True,
        attn_bias: bool = True,
        mlp_bias: bool = True,
    ) -> None:
        super().__init__()
        d_model = _pos_int("TransformerBlock", "d_model", d_model)
        d_mlp = 4 * d_model if d_mlp is None else _pos_int("TransformerBlock", "d_mlp", d_mlp)
        check_at_most(
            "TransformerBlock", "the number of parameters (about 4·d_model² + 2·d_model·d_mlp)",
            4 * d_model * d_model + 2 * d_model * d_mlp, MAX_PARAMETERS, "a smaller d_model",
        )  # fmt: skip
        self.layernorm = bool(layernorm)
        if self.layernorm:
            self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads, rope=rope, causal=causal, bias=attn_bias)
        if self.layernorm:
            self.ln2 = nn.LayerNorm(d_model)
        self.mlp = _MLP(d_model, d_mlp, mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x) if self.layernorm else x)
        return x + self.mlp(self.ln2(x) if self.layernorm else x)


class ModAddTransformer(nn.Module):
    """Transformer for modular addition ``(a + b) mod p`` (Nanda et al.; one layer by default).

    Input: integer tokens ``(N, 3)`` = ``a b =`` with ``a, b < p`` and ``=`` the token ``p``
    (vocabulary ``p + 1``). Token embedding ``embed``, learned positions ``pos`` (an
    ``nn.Embedding(3, d_model)`` looked up with per-sample position ids, so it has a batch axis
    and a Fisher side), ``n_layers`` blocks ``blocks.0, blocks.1, …`` (:class:`TransformerBlock`:
    attention + ReLU MLP of width ``d_mlp``), optional final LayerNorm ``ln_f``, unembedding
    ``unembed`` (``d_model -> p``, no bias). Output: the logits at the last position, ``(N, p)``.

    Parameters
    ----------
    p : int
        Modulus (default 113).
    d_model : int
        Residual width (default 128).
    n_heads : int
        Heads (default 4, ``d_head = 32``).
    d_mlp : int, optional
        MLP width, default ``4·d_model``.
    layernorm : bool
        Pre-LN block and a final LayerNorm (False: the original recipe, no normalisation).
    rope : bool
        RoPE on q and k (in addition to the learned positions).
    n_layers : int
        Transformer blocks ``blocks.0 … blocks.{n_layers − 1}`` (default 1, the original).
    """

    n_ctx = 3

    def __init__(
        self,
        p: int = 113,
        d_model: int = 128,
        n_heads: int = 4,
        d_mlp: int | None = None,
        layernorm: bool = False,
        rope: bool = False,
        n_layers: int = 1,
    ) -> None:
        super().__init__()
        self.p = _pos_int("ModAddTransformer", "p", p)
        n_layers = _pos_int("ModAddTransformer", "n_layers", n_layers)
        if self.p < 2:
            raise ValueError(f"deadspec.ModAddTransformer: p must be at least 2, got {p}")
        d_model = _pos_int("ModAddTransformer", "d_model", d_model)
        check_at_most(
            "ModAddTransformer", "the number of embedding parameters (2p + 1)·d_model",
            (2 * self.p + 1) * d_model, MAX_PARAMETERS, "a smaller p or d_model",
        )  # fmt: skip
        self.d_model = d_model
        self.layernorm = bool(layernorm)
        self.embed = nn.Embedding(self.p + 1, d_model)
        self.pos = nn.Embedding(self.n_ctx, d_model)
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(
                    d_model,
                    n_heads,
                    d_mlp,
                    rope,
                    layernorm=layernorm,
                    attn_bias=False,
                    mlp_bias=True,
                )
                for _ in range(n_layers)
            ]
        )
        if self.layernorm:
            self.ln_f = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, self.p, bias=False)
        with torch.no_grad():
            self.embed.weight.mul_(1.0 / math.sqrt(d_model))
            self.pos.weight.mul_(1.0 / math.sqrt(d_model))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.ndim != 2 or tokens.shape[1] != self.n_ctx:
            raise ValueError(
                f"deadspec.ModAddTransformer: tokens must be (N, {self.n_ctx}), got "
                f"{tuple(tokens.shape)}"
            )
        n = tokens.shape[0]
        pos_ids = torch.arange(self.n_ctx, device=tokens.device).expand(n, self.n_ctx)
        x = self.embed(tokens) + self.pos(pos_ids)
        for block in self.blocks:
            x = block(x)
        if self.layernorm:
            x = self.ln_f(x)
        return self.unembed(x[:, -1])

    def extra_repr(self) -> str:
        return (
            f"p={self.p}, d_model={self.d_model}, layernorm={self.layernorm}, "
            f"n_layers={len(self.blocks)}"
        )


def modadd_data(
    p: int = 113, n: int | None = None, *, seed: int = 0, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modular-addition data: tokens ``(N, 3)`` = ``a b =`` and targets ``(a + b) mod p``.

    Parameters
    ----------
    p : int
        Modulus.
    n : int, optional
        Number of pairs drawn without replacement from the ``p²`` pairs (seeded); None = all
        ``p²`` pairs in order.
    seed : int
        Seed of the draw.
    device : str or torch.device
        Where the tensors live.

    Returns
    -------
    tokens : LongTensor (N, 3)
    targets : LongTensor (N,)
    """
    p = _pos_int("modadd_data", "p", p)
    check_at_most("modadd_data", "the number of pairs p²", p * p, MAX_SAMPLES, "a smaller p")
    a = torch.arange(p).repeat_interleave(p)
    b = torch.arange(p).repeat(p)
    if n is not None:
        n = _pos_int("modadd_data", "n", n)
        if n > p * p:
            raise ValueError(f"deadspec.modadd_data: n must be at most p² = {p * p}, got {n}")
        idx = torch.randperm(p * p, generator=torch.Generator().manual_seed(int(seed)))[:n]
        a, b = a[idx], b[idx]
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1).to(device)
    return tokens, ((a + b) % p).to(device)
