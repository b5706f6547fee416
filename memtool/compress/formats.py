"""Format registry: how one layer's weight is stored in an artifact.

A :class:`Format` owns, for the layers stored in it:

* the tensor names in safetensors (``<module>.<suffix>``) and their packing from a quantizer's result;
* the JSON metadata of one layer (what ``quantization_config["modules"][name]`` holds);
* bits-per-weight accounting and the reference dequantization;
* the ``nn.Module`` that computes with the stored tensors (used by the loaders to swap ``nn.Linear``).

The artifact writer and reader only see :class:`PackedTensor` objects and call the registry; adding a format
is one ``register(MyFormat())`` call and never touches them.

Formats now:

* ``"lut"`` (version 1): group-wise LUT quantization through :class:`memtool.kernels.lut_types.LutWeight`,
  kinds ``affine`` (uniform), ``bcq`` and ``table`` (NormalFloat);
* ``"dense"``: an untouched tensor (embeddings, norms, biases, skipped layers), stored under its own name.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import torch

from memtool.errors import MemtoolError, UsageError

# method (memtool.compress.lut) -> LutWeight kind
METHOD_TO_KIND = {"uniform": "affine", "bcq": "bcq", "nf": "table"}
KIND_TO_METHOD = {v: k for k, v in METHOD_TO_KIND.items()}


@dataclass
class PackedTensor:
    """One stored unit: a packed layer (``module`` = its module name) or a dense tensor (``module`` = its name).

    ``tensors`` maps full safetensors names to tensors; ``meta`` is the JSON-serializable per-layer metadata
    (always holds ``"format"``); ``shape`` the logical weight shape; ``stats`` free-form numbers for the
    manifest (error, timings, ...).
    """

    format: str
    module: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    shape: tuple[int, ...]
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n


class Format(abc.ABC):
    """Base class; a subclass sets ``name``/``version`` and implements the abstract methods."""

    name: str = ""
    version: int = 1
    packed: bool = True  # False: the tensor is stored as is (no module swap)

    @abc.abstractmethod
    def tensor_suffixes(self, meta: dict) -> tuple[str, ...]:
        """Names of the stored tensors relative to the module prefix."""

    def tensor_names(self, module: str, meta: dict) -> list[str]:
        return [f"{module}.{s}" for s in self.tensor_suffixes(meta)]

    @abc.abstractmethod
    def pack(self, module: str, obj: Any, **kw: Any) -> PackedTensor:
        """Turn one layer's quantized object (or dense tensor) into stored tensors."""

    @abc.abstractmethod
    def unpack(self, packed: PackedTensor) -> Any:
        """The inverse of pack (the kernel-facing object, or the dense tensor)."""

    @abc.abstractmethod
    def dequantize(self, packed: PackedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Reference dequantization to a dense [out, in] weight."""

    def bits_per_weight(self, packed: PackedTensor) -> float:
        return 8.0 * packed.nbytes / max(packed.numel, 1)

    def describe(self, meta: dict) -> str:
        return self.name

    def validate_meta(self, module: str, meta: dict) -> None:
        """Raise a one-line UsageError if this format cannot read a layer described by ``meta``."""

    def config_fields(self) -> dict[str, Any]:
        """Format-wide fields the writer puts into ``quantization_config`` (e.g. the packing layout)."""
        return {}

    def check_config(self, qc: dict) -> None:
        """Raise a one-line UsageError if ``quantization_config`` was written with an incompatible layout."""

    def build_module(self, meta: dict, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype | None = None, device: Any = None) -> torch.nn.Module:
        raise MemtoolError(f"format '{self.name}' stores tensors as they are and has no module to swap in")


class DenseFormat(Format):
    """Untouched tensors, stored under their own name."""

    name = "dense"
    version = 1
    packed = False

    def tensor_suffixes(self, meta: dict) -> tuple[str, ...]:
        return ()

    def tensor_names(self, module: str, meta: dict) -> list[str]:
        return [module]

    def pack(self, module: str, obj: torch.Tensor, **kw: Any) -> PackedTensor:
        t = obj.detach().contiguous()
        return PackedTensor(self.name, module, {module: t}, {"format": self.name}, tuple(t.shape))

    def unpack(self, packed: PackedTensor) -> torch.Tensor:
        return packed.tensors[packed.module]

    def dequantize(self, packed: PackedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return packed.tensors[packed.module].to(dtype)

    def describe(self, meta: dict) -> str:
        return "dense"


class LutFormat(Format):
    """Group-wise LUT codes packed by :mod:`memtool.kernels.lut_layout` plus per-group parameters (fp16)."""

    name = "lut"
    version = 1

    def tensor_suffixes(self, meta: dict) -> tuple[str, ...]:
        from memtool.kernels.lut_types import TENSOR_NAMES

        return tuple(TENSOR_NAMES[meta["kind"]])

    @staticmethod
    def layout_id() -> str:
        from memtool.kernels import lut_layout

        return lut_layout.LAYOUT_ID

    def config_fields(self) -> dict[str, Any]:
        return {"lut_layout": self.layout_id()}

    def check_config(self, qc: dict) -> None:
        got = qc.get("lut_layout")
        if got is not None and got != self.layout_id():
            raise UsageError(f"artifact was packed with lut layout {got!r}, this memtool uses {self.layout_id()!r}: "
                             "re-quantize it")

    def validate_meta(self, module: str, meta: dict) -> None:
        from memtool.kernels.lut_layout import SUPPORTED_BITS
        from memtool.kernels.lut_types import KINDS

        for key in ("kind", "bits", "group_size"):
            if key not in meta:
                raise UsageError(f"layer {module}: lut metadata lacks '{key}'")
        if meta["kind"] not in KINDS:
            raise UsageError(f"layer {module}: unknown lut kind {meta['kind']!r} (known: {', '.join(KINDS)})")
        if meta["bits"] not in SUPPORTED_BITS:
            raise UsageError(f"layer {module}: unsupported lut bits {meta['bits']!r}")
        if not isinstance(meta["group_size"], int) or meta["group_size"] == 0 or meta["group_size"] < -1:
            raise UsageError(f"layer {module}: bad lut group size {meta['group_size']!r}")

    def to_lut_weight(self, obj: Any):
        """A :class:`LutWeight` from a LutQuantized (lut helper) or a LutWeight (returned as is)."""
        from memtool.kernels.lut_types import LutWeight

        if isinstance(obj, LutWeight):
            return obj
        method = getattr(obj, "method", None)
        if method not in METHOD_TO_KIND:
            raise UsageError(f"cannot pack {type(obj).__name__} with method {method!r} in the lut format")
        codes, bits, g = obj.codes, obj.bits, obj.group_size
        f32 = torch.float32
        if method == "uniform":
            # Store scale in fp16 and the bias -scale*zero computed from the *stored* scale, so that an integer
            # zero can be recovered exactly (memtool.compress.gptq_export relies on it).
            s16 = obj.scale.to(torch.float16)
            bias = -(s16.to(f32) * obj.zero.to(f32))
            return LutWeight.from_codes(codes, "affine", bits, g, scale=s16, bias=bias)
        if method == "bcq":
            return LutWeight.from_codes(codes, "bcq", bits, g, alpha=obj.alpha, offset=obj.offset)
        return LutWeight.from_codes(codes, "table", bits, g, scale=obj.scale, table=obj.table)

    def pack(self, module: str, obj: Any, **kw: Any) -> PackedTensor:
        lw = self.to_lut_weight(obj)
        method = getattr(obj, "method", None) or KIND_TO_METHOD[lw.kind]
        meta = {"format": self.name, "kind": lw.kind, "method": method, "bits": lw.bits,
                "group_size": -1 if lw.group_size >= lw.in_features and lw.groups == 1 else lw.group_size}
        if method == "uniform" and getattr(obj, "zero", None) is not None:
            meta["integer_zeros"] = bool(torch.equal(obj.zero, torch.round(obj.zero)))
        if lw.kind == "table":
            meta["table"] = "global" if lw.table.dim() == 1 else "group"
        tensors = {f"{module}.{k}": v.contiguous() for k, v in lw.state_dict().items()}
        return PackedTensor(self.name, module, tensors, meta, (lw.out_features, lw.in_features))

    def unpack(self, packed: PackedTensor):
        from memtool.kernels.lut_types import LutWeight

        m = packed.meta
        n, k = packed.shape
        return LutWeight.from_state_dict(packed.tensors, kind=m["kind"], bits=m["bits"], group_size=m["group_size"],
                                         in_features=k, out_features=n, prefix=packed.module + ".")

    def dequantize(self, packed: PackedTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.unpack(packed).dequantize(dtype)

    def describe(self, meta: dict) -> str:
        g = meta.get("group_size")
        return f"lut/{meta.get('method', meta.get('kind'))} {meta.get('bits')}b g{'ch' if g == -1 else g}"

    def build_module(self, meta: dict, in_features: int, out_features: int, bias: bool,
                     dtype: torch.dtype | None = None, device: Any = None) -> torch.nn.Module:
        from memtool.compress.modules import LutLinear

        return LutLinear(in_features, out_features, bias=bias, kind=meta["kind"], bits=meta["bits"],
                         group_size=meta["group_size"], table=meta.get("table", "global"), dtype=dtype,
                         device=device)


_REGISTRY: dict[str, Format] = {}


def register(fmt: Format) -> Format:
    if not fmt.name:
        raise ValueError("a format needs a name")
    _REGISTRY[fmt.name] = fmt
    return fmt


def get(name: str) -> Format:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown artifact format {name!r} (this memtool knows: {', '.join(sorted(_REGISTRY))})") \
            from None


def names() -> list[str]:
    return sorted(_REGISTRY)


register(DenseFormat())
register(LutFormat())

__all__ = ["Format", "PackedTensor", "DenseFormat", "LutFormat", "register", "get", "names", "METHOD_TO_KIND"]
