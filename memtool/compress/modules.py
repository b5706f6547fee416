"""Modules that compute with packed weights, the ``nn.Linear`` swap, and memtool's own artifact loader.

* :class:`LutLinear` holds a :class:`memtool.kernels.lut_types.LutWeight` as buffers (``qweight``, ``scales``,
  ``biases`` | ``alphas``, ``offsets`` | ``scales``, ``table``; named as in safetensors) and computes
  ``y = lut_matmul(x, W) + bias`` through :func:`memtool.kernels.dispatch.lut_matmul`.
* :func:`swap_modules` replaces the ``nn.Linear`` modules an artifact lists by their format's module.
* :func:`load_artifact_model` builds the model from config.json with parameters on the meta device, swaps the
  modules, then streams the safetensors shards into it (no transformers quantizer machinery involved).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from memtool.errors import UsageError

PARAM_DTYPE = torch.float16


def _version(t: torch.Tensor) -> int:
    """In-place modification counter (inference-mode tensors have none: they cannot be modified in place)."""
    try:
        return t._version
    except RuntimeError:
        return -1


class LutLinear(nn.Module):
    """``y = x @ W^T (+ bias)`` with W stored as LUT codes (see :mod:`memtool.kernels.lut_types`)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, kind: str, bits: int,
                 group_size: int, table: str = "global", dtype: torch.dtype | None = None, device: Any = None):
        super().__init__()
        from memtool.kernels import lut_layout
        from memtool.kernels.lut_types import KINDS, normalize_group_size

        if kind not in KINDS:
            raise UsageError(f"unknown LUT kind {kind!r}: expected one of {', '.join(KINDS)}")
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.kind, self.bits = kind, lut_layout.check_bits(bits)
        self.group_size = int(group_size)
        g = normalize_group_size(group_size, in_features)
        G = -(-self.in_features // g)
        n = self.out_features
        shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            "qweight": ((n, lut_layout.words_per_row(bits, in_features)), torch.int32)}
        if kind == "affine":
            shapes.update(scales=((n, G), PARAM_DTYPE), biases=((n, G), PARAM_DTYPE))
        elif kind == "bcq":
            shapes.update(alphas=((n, G, self.bits), PARAM_DTYPE), offsets=((n, G), PARAM_DTYPE))
        else:
            e = 1 << self.bits
            shapes.update(scales=((n, G), PARAM_DTYPE), table=(((e,) if table == "global" else (n, G, e)), PARAM_DTYPE))
        for name, (shape, dt) in shapes.items():
            self.register_buffer(name, torch.zeros(shape, dtype=dt, device=device))
        self._param_names = tuple(k for k in shapes if k != "qweight")
        if bias:
            self.bias = nn.Parameter(torch.zeros(n, dtype=dtype or torch.get_default_dtype(), device=device),
                                     requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._lw = None
        self._lw_key = None

    @classmethod
    def from_lut_weight(cls, w, bias: torch.Tensor | None = None) -> "LutLinear":
        table = "global" if w.table is None or w.table.dim() == 1 else "group"
        m = cls(w.in_features, w.out_features, bias is not None, kind=w.kind, bits=w.bits, group_size=w.group_size,
                table=table, dtype=None if bias is None else bias.dtype, device="meta")
        for name, t in w.state_dict().items():
            m._buffers[name] = t
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        return m

    def _key(self) -> tuple:
        return tuple((t.data_ptr(), _version(t), str(t.device)) for t in self._buffers.values() if t is not None)

    def lut_weight(self):
        """The :class:`LutWeight` view of the buffers (cached until a buffer changes)."""
        from memtool.kernels.lut_types import LutWeight

        key = self._key()
        if self._lw is None or self._lw_key != key:
            kw = {name: self._buffers[name] for name in self._param_names}
            self._lw = LutWeight(self.kind, self.bits, self.group_size, self.in_features, self.out_features,
                                 self._buffers["qweight"], **kw)
            self._lw_key = key
        return self._lw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from memtool.kernels.dispatch import lut_matmul

        y = lut_matmul(x, self.lut_weight())
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.lut_weight().dequantize(dtype)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for name in self._param_names:  # LUT parameters stay fp16 whatever the model dtype
            t = self._buffers.get(name)
            if t is not None and t.is_floating_point() and t.dtype != PARAM_DTYPE:
                self._buffers[name] = t.to(PARAM_DTYPE)
        self._lw = None
        return self

    def _load_from_state_dict(self, *args, **kwargs):
        self._lw = None
        return super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"kind={self.kind}, bits={self.bits}, group_size={self.group_size}")


def is_conv1d(m: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2 family): a linear layer whose weight is stored [in, out]."""
    return type(m).__name__ == "Conv1D" and getattr(m, "weight", None) is not None and m.weight.dim() == 2


def _get_parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        raise UsageError(f"the artifact lists layer {name}, which this model does not have") from None
    if child not in parent._modules:
        raise UsageError(f"the artifact lists layer {name}, which this model does not have")
    return parent, child


def swap_modules(model: nn.Module, modules: dict[str, dict], dtype: torch.dtype | None = None,
                 device: Any = "meta") -> list[str]:
    """Replace every listed ``nn.Linear`` by its format's module (built on ``device``); returns the names swapped.

    An unknown format or a listed layer that is missing / not linear raises a one-line UsageError.
    """
    from memtool.compress import formats

    swapped = []
    for name, meta in modules.items():
        fmt = formats.get(meta.get("format", "?"))
        if not fmt.packed:
            continue
        fmt.validate_meta(name, meta)
        parent, child = _get_parent(model, name)
        old = parent._modules[child]
        if isinstance(old, LutLinear):
            continue
        if isinstance(old, nn.Linear):
            k, n = old.in_features, old.out_features
        elif is_conv1d(old):  # transformers' Conv1D (GPT-2): y = x @ weight[in, out] + bias; stored as [out, in]
            k, n = old.weight.shape
        else:
            raise UsageError(f"layer {name} is a {type(old).__name__}, not a Linear; cannot load format {fmt.name}")
        has_bias = getattr(old, "bias", None) is not None
        bdt = dtype or (old.weight.dtype if old.weight.is_floating_point() else None)
        new = fmt.build_module(meta, k, n, has_bias, dtype=bdt, device=device)
        parent._modules[child] = new
        swapped.append(name)
    return swapped


@contextmanager
def params_on_meta() -> Iterator[None]:
    """While active, every registered nn.Parameter is moved to the meta device (buffers stay real)."""
    orig = nn.Module.register_parameter

    def register(self, name, param):
        orig(self, name, param)
        p = self._parameters.get(name)
        if p is not None and p.device.type != "meta":
            self._parameters[name] = nn.Parameter(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = orig


def _build_skeleton(path: Path, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    for attr in ("quantization_config",):
        if hasattr(config, attr):
            delattr(config, attr)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype if dtype.is_floating_point else torch.float32)
    try:
        with params_on_meta():
            try:
                model = AutoModelForCausalLM.from_config(config, dtype=dtype)
            except TypeError:  # transformers 4.x
                model = AutoModelForCausalLM.from_config(config, torch_dtype=dtype)
    finally:
        torch.set_default_dtype(old)
    return model


def load_artifact_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """A causal LM (eval mode) with packed layers as their format's modules, on ``device``.

    ``dtype`` is the compute dtype of the dense parts (embeddings, norms, biases); packed tensors keep theirs.
    """
    from safetensors import safe_open

    from memtool.compress.artifact import read_artifact

    art = read_artifact(path)
    model = _build_skeleton(art.path, dtype)
    swap_modules(model, art.packed_modules(), dtype=dtype, device="meta")
    expected = dict(model.state_dict(keep_vars=True))
    loaded: set[str] = set()
    for shard in art.shard_files():
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():
                if key not in expected:
                    raise UsageError(f"tensor {key} in {shard.name} has no place in the model")
                t = f.get_tensor(key)
                cur = expected[key]
                if tuple(t.shape) != tuple(cur.shape):
                    raise UsageError(f"tensor {key} has shape {list(t.shape)}, the model expects {list(cur.shape)}")
                if t.is_floating_point() and cur.is_floating_point():
                    t = t.to(cur.dtype)
                _assign(model, key, t.to(device))
                loaded.add(key)
    if hasattr(model, "tie_weights"):
        try:
            model.tie_weights()
        except TypeError:
            pass
    # everything else (non-persistent buffers, rotary tables) lives on the CPU: move it
    model.to(device)
    missing = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if missing:
        raise UsageError(f"the artifact lacks tensor {missing[0]} (and {len(missing) - 1} more)" if len(missing) > 1
                         else f"the artifact lacks tensor {missing[0]}")
    model.eval()
    return model


def _assign(model: nn.Module, key: str, t: torch.Tensor) -> None:
    mod_name, _, leaf = key.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if leaf in mod._parameters:
        old = mod._parameters[leaf]
        mod._parameters[leaf] = nn.Parameter(t, requires_grad=bool(old is not None and old.requires_grad
                                                                      and t.is_floating_point()))
    elif leaf in mod._buffers:
        mod._buffers[leaf] = t
    else:
        raise UsageError(f"tensor {key} has no place in the model")
    if isinstance(mod, LutLinear):
        mod._lw = None


__all__ = ["LutLinear", "swap_modules", "load_artifact_model", "params_on_meta"]
