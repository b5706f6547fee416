"""The kernel-facing weight type of memtool's LUT quantization: :class:`LutWeight`.

A weight ``W [N = out_features, K = in_features]`` is stored as q-bit codes (q in {2, 3, 4, 8}) packed by
:mod:`memtool.kernels.lut_layout` plus per-group parameters. Groups are ``g`` consecutive input channels of
one output row; ``G = ceil(K / g)``; the last group may be short (K need not be a multiple of g);
per-channel quantization is ``g = K`` (pass ``group_size=None``, 0 or -1 to ``from_codes``).

Kinds (``w[n, k]`` with ``c = code[n, k]``, ``j = k // g``):

* ``"affine"`` (uniform): ``w = scale[n, j] * c + bias[n, j]``           (bias = -scale * zero)
* ``"bcq"``: ``w = offset[n, j] + sum_i alpha[n, j, i] * (2 * bit_i(c) - 1)``   (alpha ``[N, G, q]``)
* ``"table"`` (NormalFloat-style): ``w = scale[n, j] * table[c]``; ``table`` is ``[2^q]`` (global) or
  ``[N, G, 2^q]`` (one table per group).

Parameters are stored in fp16 (``from_codes`` rounds them; a quantizer that wants its codes to match the
stored parameters exactly should round its parameters to fp16 before choosing codes). Dequantization
computes in fp32 from the fp16 parameters; every backend implements exactly this function.

Stored tensors (``state_dict()``; names as written to safetensors, prefix = module name + "."):

==========  =======  =====================  ======================
name        dtype    shape                  kinds
==========  =======  =====================  ======================
qweight     int32    [N, q * KU]            all (layout: lut_layout)
scales      fp16     [N, G]                 affine, table
biases      fp16     [N, G]                 affine
alphas      fp16     [N, G, q]              bcq
offsets     fp16     [N, G]                 bcq
table       fp16     [2^q] or [N, G, 2^q]   table
==========  =======  =====================  ======================

The scalars (kind, bits, group_size, in_features, out_features) belong in the artifact's
``quantization_config``; :meth:`LutWeight.meta` returns them and :meth:`LutWeight.from_state_dict` takes
them back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import torch

from memtool.errors import UsageError
from memtool.kernels import lut_layout

KINDS = ("affine", "bcq", "table")
TENSOR_NAMES = {
    "affine": ("qweight", "scales", "biases"),
    "bcq": ("qweight", "alphas", "offsets"),
    "table": ("qweight", "scales", "table"),
}
PARAM_DTYPE = torch.float16


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UsageError(f"unknown LUT kind {kind!r}: expected one of {', '.join(KINDS)}")
    return kind


def normalize_group_size(group_size: Optional[int], in_features: int) -> int:
    """``None``/0/-1 or anything >= K means per-channel (returns K); else a positive group size."""
    if group_size is None or int(group_size) in (0, -1) or int(group_size) >= in_features:
        return int(in_features)
    if int(group_size) < 0:
        raise UsageError(f"bad group size {group_size}: expected a positive integer, or -1 for per-channel")
    return int(group_size)


@dataclass
class LutWeight:
    """A packed LUT-quantized weight (see the module docstring for the math and the stored tensors)."""

    kind: str
    bits: int
    group_size: int
    in_features: int
    out_features: int
    qweight: torch.Tensor
    scales: Optional[torch.Tensor] = None
    biases: Optional[torch.Tensor] = None
    alphas: Optional[torch.Tensor] = None
    offsets: Optional[torch.Tensor] = None
    table: Optional[torch.Tensor] = None
    # backend caches (e.g. the CPU path's dequantized weight); never stored
    cache: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        _check_kind(self.kind)
        self.bits = lut_layout.check_bits(self.bits)
        self.group_size = normalize_group_size(self.group_size, self.in_features)
        n, k, g = self.out_features, self.in_features, self.groups
        exp = (n, lut_layout.words_per_row(self.bits, k))
        if tuple(self.qweight.shape) != exp or self.qweight.dtype != torch.int32:
            raise UsageError(f"qweight must be int32 {list(exp)}, got {self.qweight.dtype} {list(self.qweight.shape)}")
        need = {
            "affine": {"scales": (n, g), "biases": (n, g)},
            "bcq": {"alphas": (n, g, self.bits), "offsets": (n, g)},
            "table": {"scales": (n, g)},
        }[self.kind]
        for name, shape in need.items():
            t = getattr(self, name)
            if t is None or tuple(t.shape) != shape:
                got = None if t is None else list(t.shape)
                raise UsageError(f"{self.kind} LUT weight needs {name} of shape {list(shape)}, got {got}")
        if self.kind == "table":
            e = 1 << self.bits
            if self.table is None or tuple(self.table.shape) not in ((e,), (n, g, e)):
                got = None if self.table is None else list(self.table.shape)
                raise UsageError(f"table must have shape [{e}] or [{n}, {g}, {e}], got {got}")

    @property
    def groups(self) -> int:
        """G = ceil(K / g)."""
        return -(-self.in_features // self.group_size)

    @property
    def device(self) -> torch.device:
        return self.qweight.device

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        kind: str,
        bits: int,
        group_size: Optional[int],
        *,
        scale: Optional[torch.Tensor] = None,
        bias: Optional[torch.Tensor] = None,
        alpha: Optional[torch.Tensor] = None,
        offset: Optional[torch.Tensor] = None,
        table: Optional[torch.Tensor] = None,
    ) -> "LutWeight":
        """Pack ``codes`` (integer ``[N, K]``) and parameters (any float dtype; stored as fp16).

        affine: ``scale, bias [N, G]``; bcq: ``alpha [N, G, bits], offset [N, G]``;
        table: ``scale [N, G]`` and ``table [2^bits]`` or ``[N, G, 2^bits]``.
        """
        _check_kind(kind)
        if codes.dim() != 2:
            raise UsageError(f"codes must be 2-D [out, in], got shape {list(codes.shape)}")
        n, k = codes.shape
        qweight = lut_layout.pack_codes(codes, bits)

        def p(t, name):
            if t is None:
                raise UsageError(f"{kind} LUT weight needs {name}")
            return t.detach().to(device=codes.device, dtype=PARAM_DTYPE).contiguous()

        kw = {}
        if kind == "affine":
            kw = {"scales": p(scale, "scale"), "biases": p(bias, "bias")}
        elif kind == "bcq":
            kw = {"alphas": p(alpha, "alpha"), "offsets": p(offset, "offset")}
        else:
            kw = {"scales": p(scale, "scale"), "table": p(table, "table")}
        return cls(kind, bits, group_size, k, n, qweight, **kw)

    # ------------------------------------------------------------------ views
    def to_codes(self) -> torch.Tensor:
        """Exact unpack: uint8 ``[N, K]``."""
        return lut_layout.unpack_codes(self.qweight, self.bits, self.in_features)

    def _expand(self, t: torch.Tensor) -> torch.Tensor:
        """[N, G, ...] -> [N, K, ...] (group j covers columns j*g .. j*g+g-1)."""
        idx = torch.arange(self.in_features, device=t.device) // self.group_size
        return t.index_select(1, idx)

    def dequantize(self, dtype: torch.dtype = torch.float32, codes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The real weight ``[N, K]``, computed in fp32 from the fp16 parameters, returned in ``dtype``."""
        c = (self.to_codes() if codes is None else codes).to(torch.int64)
        f32 = torch.float32
        if self.kind == "affine":
            w = self._expand(self.scales.to(f32)) * c.to(f32) + self._expand(self.biases.to(f32))
        elif self.kind == "bcq":
            a = self._expand(self.alphas.to(f32))  # [N, K, q]
            sh = torch.arange(self.bits, device=c.device)
            signs = ((c.unsqueeze(-1) >> sh) & 1).to(f32) * 2 - 1
            w = self._expand(self.offsets.to(f32)) + (a * signs).sum(-1)
        else:
            t = self.table.to(f32)
            if t.dim() == 1:
                vals = t[c]
            else:
                vals = torch.gather(self._expand(t), 2, c.unsqueeze(-1)).squeeze(-1)
            w = self._expand(self.scales.to(f32)) * vals
        return w.to(dtype)

    def lut(self) -> torch.Tensor:
        """Per-group lookup table ``[N, G, 2^q]`` fp32: ``w = lut[n, k // g, code]`` (any kind)."""
        f32 = torch.float32
        e = torch.arange(1 << self.bits, device=self.device)
        if self.kind == "affine":
            return self.scales.to(f32)[..., None] * e.to(f32) + self.biases.to(f32)[..., None]
        if self.kind == "bcq":
            signs = ((e[:, None] >> torch.arange(self.bits, device=self.device)) & 1).to(f32) * 2 - 1  # [E, q]
            return self.offsets.to(f32)[..., None] + self.alphas.to(f32) @ signs.T
        t = self.table.to(f32)
        if t.dim() == 1:
            t = t.expand(self.out_features, self.groups, -1)
        return self.scales.to(f32)[..., None] * t

    # ------------------------------------------------------------------ storage
    def meta(self) -> dict:
        return {
            "kind": self.kind,
            "bits": self.bits,
            "group_size": self.group_size,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Plain tensors named as stored in safetensors (see the module docstring)."""
        return {prefix + name: getattr(self, name) for name in TENSOR_NAMES[self.kind]}

    @classmethod
    def from_state_dict(
        cls,
        sd: dict[str, torch.Tensor],
        *,
        kind: str,
        bits: int,
        group_size: Optional[int],
        in_features: int,
        out_features: int,
        prefix: str = "",
    ) -> "LutWeight":
        _check_kind(kind)
        kw = {}
        for name in TENSOR_NAMES[kind]:
            if prefix + name not in sd:
                raise UsageError(f"missing tensor {prefix + name} for a {kind} LUT weight")
            kw[name] = sd[prefix + name]
        return cls(kind, bits, group_size, in_features, out_features, **kw)

    def _map(self, fn) -> "LutWeight":
        """The same weight with ``fn`` applied to each stored tensor (no caches)."""
        kw = {}
        for name in ("qweight", "scales", "biases", "alphas", "offsets", "table"):
            t = getattr(self, name)
            kw[name] = None if t is None else fn(t)
        return replace(self, cache={}, **kw)

    def to(self, device=None) -> "LutWeight":
        return self._map(lambda t: t.to(device))

    def clone(self) -> "LutWeight":
        """A copy in fresh memory (e.g. to time a kernel on weights that are not in cache)."""
        return self._map(torch.Tensor.clone)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def bits_per_weight(self) -> float:
        return 8.0 * self.nbytes() / (self.in_features * self.out_features)
