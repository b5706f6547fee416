"""Group-wise LUT quantization: the config, the quantized-weight result and round-to-nearest / fitted quantizers.

A weight ``W [N=out, K=in]`` is cut into groups of ``g`` consecutive input channels per output row
(G = ceil(K / g) groups, the last one shorter when g does not divide K; g = -1 is one group per row). Each weight
stores a q-bit code and decodes through its group's table: ``w = LUT[n, group, code]``. Table types:

- ``uniform``: ``scale * (code - zero)`` (asymmetric min/max, or symmetric with ``sym=True``);
- ``bcq``: ``offset + sum_i alpha_i * (2*bit_i - 1)`` (LUT-GEMM's binary coding; uniform converts exactly);
- ``nf``: ``scale * table[code]`` with a global NormalFloat table and a per-group absmax scale.

Everything here is the pure-torch reference (any device; parameters fitted in float32 or float64).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from memtool.compress.lut_bcq import bcq_lut, fit_bcq
from memtool.compress.lut_common import from_groups, n_groups, nearest_codes, to_groups
from memtool.compress.lut_nf import encode_nf, fit_nf, nf_table
from memtool.compress.lut_uniform import encode_uniform, fit_uniform, uniform_lut, uniform_to_bcq_params
from memtool.errors import UsageError

BITS = (2, 3, 4, 8)
GROUP_SIZES = (32, 64, 128, 256, -1)
METHODS = ("uniform", "bcq", "nf")


@dataclass(frozen=True)
class LutConfig:
    """What to quantize to. ``bcq_iters``: alternating-refinement rounds of the BCQ fit. ``clip_steps``: for
    uniform and nf, try that many shrunken ranges (factors 1, 0.975, 0.95, ...) per group and keep the one with
    the lowest squared error (0: plain min/max or absmax)."""

    bits: int = 4
    group_size: int = 128
    method: str = "uniform"
    sym: bool = False
    bcq_iters: int = 8
    clip_steps: int = 0

    def __post_init__(self):
        if isinstance(self.bits, bool) or self.bits not in BITS:
            raise UsageError("bits must be one of 2, 3, 4, 8, got " + repr(self.bits))
        if isinstance(self.group_size, bool) or self.group_size not in GROUP_SIZES:
            raise UsageError(f"group size must be one of 32, 64, 128, 256 or -1 (per-channel), got {self.group_size!r}")
        if self.method not in METHODS:
            raise UsageError(f"unknown method {self.method!r}: expected one of uniform, bcq, nf")
        if self.sym and self.method != "uniform":
            raise UsageError(f"sym applies only to the uniform method, not {self.method!r}")
        if not isinstance(self.bcq_iters, int) or self.bcq_iters < 0:
            raise UsageError(f"bcq_iters must be a non-negative integer, got {self.bcq_iters!r}")
        if not isinstance(self.clip_steps, int) or not 0 <= self.clip_steps <= 40:
            raise UsageError(f"clip_steps must be an integer in 0..40, got {self.clip_steps!r}")


PARAM_NAMES = {"uniform": ("scale", "zero"), "bcq": ("alpha", "offset"), "nf": ("scale", "table")}


@dataclass
class LutQuantized:
    """A quantized ``[N, K]`` weight: unpacked codes plus the parameters of its tables.

    uniform: ``scale``, ``zero`` [N, G]; bcq: ``alpha`` [N, G, q], ``offset`` [N, G]; nf: ``scale`` [N, G] and
    ``table`` [2^q]. ``codes`` is uint8 [N, K].
    """

    codes: torch.Tensor
    bits: int
    group_size: int
    method: str
    scale: torch.Tensor | None = None
    zero: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    offset: torch.Tensor | None = None
    table: torch.Tensor | None = None
    extra: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.codes.shape)

    @property
    def n_groups(self) -> int:
        return n_groups(self.codes.shape[1], self.group_size)

    def params(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in PARAM_NAMES[self.method]}

    def to_lut(self) -> torch.Tensor:
        """``[N, G, 2^q]`` decode table of every group (in the parameters' dtype)."""
        return params_to_lut(self.method, self.params(), self.bits)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The reference decode ``[N, K]``: each code looked up in its group's table."""
        N, K = self.codes.shape
        cg, _ = to_groups(self.codes.long(), self.group_size)
        w = from_groups(self.to_lut().gather(-1, cg), K)
        return w if dtype is None else w.to(dtype)

    def to_bcq(self) -> "LutQuantized":
        """Exact BCQ form of a uniform weight (same codes); BCQ is returned as is."""
        if self.method == "bcq":
            return self
        if self.method != "uniform":
            raise UsageError(f"only uniform weights convert exactly to BCQ, not {self.method!r}")
        p = uniform_to_bcq_params(self.scale, self.zero, self.bits)
        return LutQuantized(self.codes, self.bits, self.group_size, "bcq", alpha=p["alpha"], offset=p["offset"])

    def params_to(self, dtype: torch.dtype) -> "LutQuantized":
        """A copy whose parameters are cast (e.g. to float16, as stored); codes shared."""
        return replace(self, **{k: v.to(dtype) for k, v in self.params().items()})

    def bits_per_weight(self, param_bits: int = 16) -> float:
        return bits_per_weight(self.bits, self.group_size, self.method, self.shape, param_bits)


def bits_per_weight(bits: int, group_size: int, method: str, shape: tuple[int, int], param_bits: int = 16) -> float:
    """Stored bits per weight: q-bit codes plus per-group parameters (and NF's global table) at ``param_bits``.

    uniform: scale + zero per group; bcq: q alphas + offset per group; nf: scale per group + 2^q table entries.
    """
    N, K = shape
    G = n_groups(K, group_size)
    per_group = {"uniform": 2, "bcq": bits + 1, "nf": 1}[method]
    total = N * K * bits + N * G * per_group * param_bits
    if method == "nf":
        total += 2**bits * param_bits
    return total / (N * K)


def params_to_lut(method: str, params: dict[str, torch.Tensor], bits: int) -> torch.Tensor:
    """Per-group decode tables ``[N, G, 2^q]`` from a method's parameters."""
    if method == "uniform":
        return uniform_lut(params["scale"], params["zero"], bits)
    if method == "bcq":
        return bcq_lut(params["alpha"], params["offset"])
    if method == "nf":
        return params["scale"][..., None] * params["table"].to(params["scale"].dtype)
    raise UsageError(f"unknown method {method!r}: expected one of uniform, bcq, nf")


def _fit_encode(xs: torch.Tensor, x: torch.Tensor, mask, cfg: LutConfig):
    """Parameters fitted to ``xs`` (possibly a shrunken copy of ``x``), and the codes of ``x`` under them."""
    if cfg.method == "uniform":
        p = fit_uniform(xs, mask, cfg.bits, cfg.sym)
        return p, encode_uniform(x, p["scale"], p["zero"], cfg.bits)
    table = nf_table(cfg.bits, x.dtype, x.device)
    p = fit_nf(xs, mask)
    p["table"] = table
    return p, encode_nf(x, p["scale"], table)


def fit_group_params(xg: torch.Tensor, mask: torch.Tensor | None, cfg: LutConfig,
                     weight: torch.Tensor | None = None):  # fmt: skip
    """Fit the tables of grouped weights ``xg [N, G, g]``; returns ``(params, codes int64 [N, G, g])``.

    The clip search (uniform, nf) keeps, per group, the range shrink with the least squared error; ``weight``
    (broadcast to ``xg``, e.g. a Hessian diagonal ``[g]``) weights each column's error (GPTQ: a column whose
    input is large costs more to clip)."""
    if cfg.method == "bcq":
        return fit_bcq(xg, mask, cfg.bits, cfg.bcq_iters)
    params, codes = _fit_encode(xg, xg, mask, cfg)
    if cfg.clip_steps <= 1:
        return params, codes
    m = 1.0 if mask is None else mask.to(xg.dtype)
    if weight is not None:
        m = m * weight.to(xg.dtype)

    def sq_err(p, c):
        return ((params_to_lut(cfg.method, p, cfg.bits).gather(-1, c) - xg) ** 2 * m).sum(-1)

    best = sq_err(params, codes)
    for j in range(1, cfg.clip_steps):
        p, c = _fit_encode(xg * (1 - 0.025 * j), xg, mask, cfg)
        err = sq_err(p, c)
        take = err < best
        best = torch.where(take, err, best)
        codes = torch.where(take[..., None], c, codes)
        for k, v in p.items():
            if k != "table":
                params[k] = torch.where(take, v, params[k])
    return params, codes


def quantize_weight(w: torch.Tensor, cfg: LutConfig, compute_dtype: torch.dtype = torch.float32) -> LutQuantized:
    """Round-to-nearest (uniform, nf) or fitted (bcq) quantization of ``w [N, K]`` without calibration data."""
    if w.dim() != 2:
        raise UsageError(f"expected a 2-D weight [out, in], got shape {tuple(w.shape)}")
    K = w.shape[1]
    xg, mask = to_groups(w.to(compute_dtype), cfg.group_size)
    params, codes = fit_group_params(xg, mask, cfg)
    return LutQuantized(from_groups(codes, K).to(torch.uint8).contiguous(), cfg.bits, cfg.group_size, cfg.method,
                        **params)


__all__ = ["LutConfig", "LutQuantized", "quantize_weight", "bits_per_weight", "params_to_lut", "fit_group_params",
           "nearest_codes", "nf_table", "BITS", "GROUP_SIZES", "METHODS"]
