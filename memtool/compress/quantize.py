"""The quantize pipeline: MODEL -> packed artifact (``memtool quantize``).

* ``calib_method="rtn"`` streams the checkpoint tensor by tensor (:class:`memtool.models.TensorSource`): each
  linear weight is quantized on ``device`` and packed, everything else is passed through as dense, and the
  writer flushes a shard whenever its size limit is reached. Peak host memory is about one input shard plus
  one output shard; the model is never built.
* ``calib_method="gptq"`` loads the model on the CPU and walks its decoder blocks with
  :func:`memtool.compress.calibrate.collect_hessians_blockwise` (one block on ``device`` at a time): the
  block's linears are quantized with :func:`memtool.compress.gptq.gptq_quantize`, replaced in place by their
  *stored* dequantized values, and the next block is fed with the quantized block's outputs. Dense tensors
  are streamed from the checkpoint at the end.

Every argument is validated before anything is created (bad bits / group size / method / override ->
UsageError, exit 2, nothing written).
"""

from __future__ import annotations

import fnmatch
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from memtool.compress import formats
from memtool.errors import UsageError
from memtool.progress import Progress

CALIB_METHODS = ("rtn", "gptq")
DENSE_DTYPES = ("auto", "keep", "float16", "bfloat16", "float32")


@dataclass(frozen=True)
class Override:
    pattern: str
    bits: int | None = None
    group_size: int | None = None
    method: str | None = None

    def text(self) -> str:
        return f"{self.pattern}={self.bits or ''}:{'' if self.group_size is None else self.group_size}:" \
               f"{self.method or ''}".rstrip(":")


@dataclass
class QuantizeSpec:
    bits: int = 4
    group_size: int = 128
    method: str = "uniform"
    calib_method: str = "rtn"
    calib: str = "builtin"
    n_calib: int = 128
    calib_len: int = 512
    skip: list[str] = field(default_factory=list)
    overrides: list[Override] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    dense_dtype: str = "auto"
    max_shard_bytes: int = 2 * 2**30
    keep_lm_head: bool = True

    def base_config(self):
        from memtool.compress.lut import LutConfig

        return LutConfig(bits=self.bits, group_size=self.group_size, method=self.method)


def parse_override(text: str) -> Override:
    """``PATTERN=bits[:group_size[:method]]`` (empty fields keep the default), e.g. ``*.down_proj=4:128:nf``."""
    from memtool.compress.lut import LutConfig

    if "=" not in text:
        raise UsageError(f"bad --override {text!r}: expected PATTERN=bits:group_size:method, e.g. 'down_proj=4:128'")
    pat, _, spec = text.rpartition("=")
    if not pat:
        raise UsageError(f"bad --override {text!r}: empty pattern")
    parts = spec.split(":")
    if len(parts) > 3:
        raise UsageError(f"bad --override {text!r}: expected at most bits:group_size:method")
    parts += [""] * (3 - len(parts))
    try:
        bits = int(parts[0]) if parts[0] else None
        g = int(parts[1]) if parts[1] else None
    except ValueError:
        raise UsageError(f"bad --override {text!r}: bits and group size must be integers") from None
    method = parts[2] or None
    LutConfig(bits=bits or 4, group_size=128 if g is None else g, method=method or "uniform")  # validates
    return Override(pat, bits, g, method)


def matches(name: str, pattern: str) -> bool:
    """Glob (full match) when the pattern has wildcards (``*.down_proj``), else a substring (``down_proj``)."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return pattern in name


def validate(spec: QuantizeSpec) -> None:
    """Check every argument without touching the disk (except that a --calib FILE must exist)."""
    spec.base_config()
    for o in spec.overrides:
        if not isinstance(o, Override):
            raise UsageError(f"bad override {o!r}")
    if spec.calib_method not in CALIB_METHODS:
        raise UsageError(f"unknown calibration method {spec.calib_method!r}: expected one of {', '.join(CALIB_METHODS)}")
    if spec.dense_dtype not in DENSE_DTYPES:
        raise UsageError(f"unknown dense dtype {spec.dense_dtype!r}: expected one of {', '.join(DENSE_DTYPES)}")
    if spec.calib_method == "gptq":
        if spec.n_calib < 1:
            raise UsageError(f"--n-calib must be at least 1, got {spec.n_calib}")
        if spec.calib_len < 2:
            raise UsageError(f"--calib-len must be at least 2, got {spec.calib_len}")
        if spec.calib not in ("builtin", "wikitext2"):
            p = Path(spec.calib).expanduser()
            if not p.is_file():
                raise UsageError(f"calibration file not found: {p}")
    if spec.max_shard_bytes < 1:
        raise UsageError("the shard size limit must be positive")
    dev = str(spec.device)
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {dev}: no CUDA device is available")
    elif dev != "cpu":
        raise UsageError(f"unknown device {dev!r}: expected cpu or cuda[:N]")


# ---------------------------------------------------------------------------------------------------- planning
def linear_layers(config_dir: Path) -> tuple[dict[str, tuple[int, int, bool, bool]], set[str]]:
    """``({module: (in, out, has_bias, transposed)}, output-embedding names)`` of the model, built on meta.

    ``transposed``: the checkpoint stores the weight as [in, out] (transformers' Conv1D).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(config_dir))
    if hasattr(config, "quantization_config"):
        raise UsageError(f"{config_dir} is already quantized ({getattr(config, 'quantization_config')!r:.60})")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    from memtool.compress.modules import is_conv1d

    lin = {}
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            lin[n] = (m.in_features, m.out_features, m.bias is not None, False)
        elif is_conv1d(m):  # GPT-2's Conv1D: weight stored [in, out]
            lin[n] = (m.weight.shape[0], m.weight.shape[1], m.bias is not None, True)
    heads = set()
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for n, m in model.named_modules():
        if out_emb is not None and m is out_emb:
            heads.add(n)
    heads |= {n for n in lin if n.split(".")[-1] == "lm_head"}
    return lin, heads


def plan_layers(linears: dict[str, tuple[int, int, bool, bool]], heads: set[str], spec: QuantizeSpec,
                weight_names: set[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``({module: LutConfig} to quantize, {module: reason} kept dense)``."""
    from memtool.compress.lut import LutConfig

    plan, dense = {}, {}
    for name in linears:
        if f"{name}.weight" not in weight_names:
            dense[name] = "tied or not in the checkpoint"
            continue
        if any(matches(name, p) for p in spec.skip):
            dense[name] = "--skip"
            continue
        ov = [o for o in spec.overrides if matches(name, o.pattern)]
        if name in heads and not ov:
            dense[name] = "output embeddings (16-bit by default)"
            continue
        bits, g, method = spec.bits, spec.group_size, spec.method
        for o in ov:  # later overrides win
            bits = o.bits if o.bits is not None else bits
            g = o.group_size if o.group_size is not None else g
            method = o.method or method
        plan[name] = LutConfig(bits=bits, group_size=g, method=method)
    return plan, dense


def _dense_dtype(t: torch.Tensor, mode: str) -> torch.dtype:
    if not t.is_floating_point() or mode == "keep":
        return t.dtype
    if mode != "auto":
        return getattr(torch, mode)
    if t.dtype in (torch.float16, torch.bfloat16):
        return t.dtype
    if t.numel() == 0:
        return torch.float16
    amax = float(t.detach().abs().amax()) if t.numel() else 0.0
    return torch.float16 if math.isfinite(amax) and amax < 6.0e4 else torch.bfloat16


def _rel_fro(w: torch.Tensor, wq: torch.Tensor) -> float:
    w = w.to(torch.float32)
    den = float(torch.linalg.vector_norm(w))
    return float(torch.linalg.vector_norm(w - wq.to(torch.float32))) / den if den > 0 else 0.0


def _mib(b: int) -> str:
    return f"{b / 2**20:8.2f} MiB"


def _line(name: str, shape, desc: str, before: int, after: int, extra: str = "") -> str:
    return (f"{name:<52} {str(list(shape)):>16} {desc:<22} {_mib(before)} -> {_mib(after)}"
            + (f"  {extra}" if extra else ""))


# ---------------------------------------------------------------------------------------------------- main
def quantize_model(model: str, out: str | Path, spec: QuantizeSpec, *, overwrite: bool = False,
                   progress: Progress | None = None, command: list[str] | None = None,
                   allow_pickle: bool = False) -> dict[str, Any]:
    """Quantize MODEL into the artifact OUT; returns the manifest's totals plus timings."""
    from memtool.compress.artifact import ArtifactWriter

    progress = progress or Progress()
    validate(spec)
    ArtifactWriter.check_target(out, overwrite)
    from memtool.models import TensorSource, resolve

    t0 = time.perf_counter()
    ref = resolve(model, allow_pickle=allow_pickle, progress=progress)
    if ref.quant_method is not None:
        raise UsageError(f"{model} is already quantized ({ref.quant_method}); quantize a 16/32-bit checkpoint")
    if Path(out).expanduser().resolve() == Path(ref.path).resolve():
        raise UsageError(f"the output {out} is the input model's directory: write the artifact elsewhere")
    if ref.pickle_files:
        raise UsageError(f"{model} has only pickle weights; memtool quantize streams safetensors checkpoints")
    src = TensorSource(ref)
    names = src.names()
    linears, heads = linear_layers(ref.path)
    plan, dense_why = plan_layers(linears, heads, spec, set(names))
    transposed = {n for n, v in linears.items() if v[3]}
    if not plan:
        raise UsageError(f"nothing to quantize in {model}: no linear layer matched (all skipped or none found)")
    torch.manual_seed(spec.seed)
    progress.log(f"quantizing {len(plan)} linear layers of {model} ({spec.calib_method}, {spec.bits}-bit "
                 f"g{spec.group_size} {spec.method}); {len(dense_why)} linear layers stay dense")
    calib_ids = _calibration_ids(ref, spec) if spec.calib_method == "gptq" else None  # may fail: before writing
    t_hash = time.perf_counter()
    source_sha = src.sha256()
    t_hash = time.perf_counter() - t_hash
    with ArtifactWriter(out, overwrite=overwrite, max_shard_bytes=spec.max_shard_bytes, progress=progress) as w:
        if spec.calib_method == "rtn":
            _run_rtn(src, plan, spec, w, progress, transposed)
        else:
            _run_gptq(ref, src, plan, spec, w, progress, transposed, calib_ids)
        qc = {"format": "lut", "bits": spec.bits, "group_size": spec.group_size, "method": spec.method,
              "kind": formats.METHOD_TO_KIND[spec.method], "calib_method": spec.calib_method,
              "modules_to_not_convert": sorted(dense_why), "skip": list(spec.skip),
              "overrides": [o.text() for o in spec.overrides]}
        manifest = {
            "command": command if command is not None else list(sys.argv),
            "seed": spec.seed,
            "source": {"model": model, "kind": ref.kind, "path": str(ref.path), "files": [s.name for s in src.shards],
                       "bytes": src.nbytes(), "sha256": source_sha},
            "settings": {"bits": spec.bits, "group_size": spec.group_size, "method": spec.method,
                         "calib_method": spec.calib_method, "device": spec.device, "dense_dtype": spec.dense_dtype,
                         "skip": spec.skip, "overrides": [o.text() for o in spec.overrides],
                         **({"calib": spec.calib, "n_calib": spec.n_calib, "calib_len": spec.calib_len}
                            if spec.calib_method == "gptq" else {})},
            "dense_linear_layers": dense_why,
            "timings": {"checksum_s": round(t_hash, 3), "total_s": None},
        }
        manifest["timings"]["total_s"] = round(time.perf_counter() - t0, 3)
        config = dict(ref.config)
        config.pop("quantization_config", None)
        w.finish(config, qc, manifest, copy_from=ref.path)
        from memtool.compress.artifact import totals

        tot = totals(w.layers)
    tot["seconds"] = round(time.perf_counter() - t0, 2)
    tot["out"] = str(Path(out).expanduser().absolute())
    errs = [r.get("rel_error") for r in w.layers if r.get("rel_error") is not None]
    if errs:
        tot["mean_rel_error"] = round(sum(errs) / len(errs), 6)
    oerrs = [r.get("output_rel_error") for r in w.layers if r.get("output_rel_error") is not None]
    if oerrs:
        tot["mean_output_rel_error"] = round(sum(oerrs) / len(oerrs), 6)
    return {"totals": tot, "layers": w.layers}


def _pack_dense(name: str, t: torch.Tensor, spec: QuantizeSpec):
    dt = _dense_dtype(t, spec.dense_dtype)
    p = formats.get("dense").pack(name, t.to(dt))
    p.stats["bytes_before"] = t.numel() * 2 if t.is_floating_point() else t.numel() * t.element_size()
    return p


def _quantize_one(name: str, w: torch.Tensor, cfg, spec: QuantizeSpec):
    from memtool.compress.lut import quantize_weight

    t1 = time.perf_counter()
    wd = w.to(device=spec.device, dtype=torch.float32)
    q = quantize_weight(wd, cfg)
    packed = formats.get("lut").pack(name, q)
    deq = formats.get("lut").dequantize(packed)
    packed.stats.update(rel_error=round(_rel_fro(wd, deq), 6), seconds=round(time.perf_counter() - t1, 4),
                        bytes_before=w.numel() * 2)
    packed.tensors = {k: v.cpu() for k, v in packed.tensors.items()}
    return packed


def _run_rtn(src, plan, spec: QuantizeSpec, w, progress: Progress, transposed: set[str]) -> None:
    total = len(src.names())
    with progress.task("quantize (rtn)", total=total) as task:
        for name, t in src.iter_tensors():
            mod = name[: -len(".weight")] if name.endswith(".weight") else None
            cfg = plan.get(mod) if mod else None
            if cfg is not None and t.dim() == 2:
                packed = _quantize_one(mod, t.T if mod in transposed else t, cfg, spec)
                extra = f"err {packed.stats['rel_error']:.4f}"
            else:
                packed = _pack_dense(name, t, spec)
                extra = ""
            w.add(packed)
            fmt = formats.get(packed.format)
            progress.log(_line(name if cfg is None else mod, packed.shape, fmt.describe(packed.meta),
                               packed.stats["bytes_before"], packed.nbytes, extra))
            task.advance(1, name)
            del t, packed


def _calibration_ids(ref, spec: QuantizeSpec) -> torch.Tensor:
    from memtool.models import load_tokenizer
    from memtool.models.corpus import calibration_tokens

    tok = load_tokenizer(ref)
    source = None if spec.calib == "builtin" else spec.calib
    return calibration_tokens(tok, spec.n_calib, spec.calib_len, source, seed=spec.seed)


def _run_gptq(ref, src, plan, spec: QuantizeSpec, w, progress: Progress, transposed: set[str],
              ids: torch.Tensor) -> None:
    from memtool.compress.calibrate import block_linears, collect_hessians_blockwise, find_blocks
    from memtool.compress.gptq import gptq_quantize, output_error
    from memtool.models import load_model

    model = load_model(ref, dtype=torch.float32, device="cpu")
    prefix, blocks = find_blocks(model)
    done: set[str] = set()
    lut = formats.get("lut")
    with progress.task("quantize (gptq)", total=len(plan)) as task:
        for i, hess in collect_hessians_blockwise(model, ids, spec.device, progress):
            for name, mod in block_linears(blocks[i]).items():
                full = f"{prefix}.{i}.{name}"
                cfg = plan.get(full)
                if cfg is None or name not in hess:
                    continue
                t1 = time.perf_counter()
                conv = full in transposed
                W = mod.weight.data.T if conv else mod.weight.data
                H = hess[name]
                q = gptq_quantize(W.to(torch.float32), H, cfg)
                packed = lut.pack(full, q)
                deq = lut.dequantize(packed).to(W.device)
                w32 = W.to(torch.float32)
                num = output_error(w32, deq, H)
                den = float(((w32 @ H.to(w32.dtype)) * w32).sum())
                packed.stats.update(rel_error=round(_rel_fro(w32, deq), 6),
                                    output_rel_error=round(num / den, 6) if den > 0 else 0.0,
                                    seconds=round(time.perf_counter() - t1, 4), bytes_before=W.numel() * 2)
                W.copy_(deq.to(W.dtype))  # (a view for Conv1D) the next block sees the stored quantized weights
                packed.tensors = {k: v.cpu() for k, v in packed.tensors.items()}
                w.add(packed)
                done.add(full)
                progress.log(_line(full, packed.shape, lut.describe(packed.meta), packed.stats["bytes_before"],
                                   packed.nbytes, f"err {packed.stats['rel_error']:.4f} "
                                                  f"out {packed.stats['output_rel_error']:.4f}"))
                task.advance(1, full)
        del model
        # layers outside the decoder blocks (e.g. an lm_head override) have no Hessian here: round to nearest
        for name, t in src.iter_tensors():
            mod = name[: -len(".weight")] if name.endswith(".weight") else None
            if mod in done:
                continue
            cfg = plan.get(mod) if mod else None
            if cfg is not None and t.dim() == 2:
                packed = _quantize_one(mod, t.T if mod in transposed else t, cfg, spec)
                packed.stats["note"] = "outside the decoder blocks: round-to-nearest"
                task.advance(1, mod)
                progress.log(_line(mod, packed.shape, lut.describe(packed.meta), packed.stats["bytes_before"],
                                   packed.nbytes, f"err {packed.stats['rel_error']:.4f} (rtn)"))
            else:
                packed = _pack_dense(name, t, spec)
            w.add(packed)


__all__ = ["QuantizeSpec", "Override", "parse_override", "quantize_model", "validate", "plan_layers", "matches"]
