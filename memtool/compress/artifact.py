"""Packed artifacts: an HF-style model directory whose config.json carries memtool's ``quantization_config``.

Layout (see docs/FORMAT.md)::

    OUT/
      config.json                     model config + quantization_config {quant_method: "memtool", ...}
      model.safetensors               or model-00001-of-0000N.safetensors ... + model.safetensors.index.json
      manifest.json                   run record: version, command, seed, source + sha256, per-layer stats
      tokenizer files, generation_config.json (copied from the source)

:class:`ArtifactWriter` streams :class:`memtool.compress.formats.PackedTensor` objects into shards of at most
``max_shard_bytes`` while they come, inside ``OUT.tmp-<random>`` beside OUT; ``finish`` renames it into place.
Any exception, Ctrl-C or SIGTERM before that removes the temporary directory: no half artifact is ever visible
under OUT. An existing OUT is refused unless ``overwrite=True``; then the old directory is renamed aside, the
new one renamed in, and the old one deleted.

:func:`read_artifact` opens and validates an artifact (one-line UsageErrors); :func:`summarize` describes any
model directory (an artifact or a plain HF checkpoint, all dense) layer by layer, from the headers only.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from memtool.compress import formats
from memtool.compress.formats import PackedTensor
from memtool.errors import UsageError

QUANT_METHOD = "memtool"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 2 * 2**30
BASELINE_BITS = 16  # "bytes before" are counted at 16 bits per weight
_COPY_PATTERNS = ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*", "merges.txt", "*.model",
                  "*.tiktoken", "chat_template*", "generation_config.json")

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
                "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8}


def parse_size(s: str | int) -> int:
    """'2GB', '500MB', '2GiB', 1000 -> bytes."""
    if isinstance(s, int):
        return s
    t = s.strip().upper().replace(" ", "")
    units = [("GIB", 2**30), ("MIB", 2**20), ("KIB", 2**10), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)]
    for u, m in units:
        if t.endswith(u):
            try:
                v = float(t[: -len(u)])
            except ValueError:
                break
            if v <= 0:
                break
            return int(v * m)
    try:
        v = int(t)
        if v > 0:
            return v
    except ValueError:
        pass
    raise UsageError(f"bad size {s!r}: use e.g. 2GB, 500MB or a number of bytes")


def sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def hardware_summary() -> dict[str, Any]:
    hw: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                          "cpu_count": os.cpu_count()}
    try:
        import transformers

        hw["transformers"] = transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return hw


class _Terminated(KeyboardInterrupt):
    """SIGTERM turned into an interrupt so that the writer cleans up (SLURM sends SIGTERM before killing)."""


class ArtifactWriter:
    """Stream packed tensors into an artifact directory; atomic on ``finish``.

    Use as a context manager::

        with ArtifactWriter(out, overwrite=False) as w:
            w.add(packed) ...
            w.finish(config, quantization_config, manifest, copy_from=src_dir)
    """

    def __init__(self, out: str | Path, *, overwrite: bool = False, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
                 progress=None):
        self.out = Path(out).expanduser().absolute()
        self.overwrite = overwrite
        self.max_shard_bytes = int(max_shard_bytes)
        self.progress = progress
        self.tmp: Path | None = None
        self.finished = False
        self._buf: dict[str, torch.Tensor] = {}
        self._buf_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.modules: dict[str, dict] = {}
        self.layers: list[dict] = []
        self.total_bytes = 0
        self._names: set[str] = set()
        self._old_sigterm = None

    # ------------------------------------------------------------------ lifecycle
    @staticmethod
    def check_target(out: str | Path, overwrite: bool) -> Path:
        """Validate OUT before any work: exists without --overwrite, or parent missing -> UsageError."""
        out = Path(out).expanduser().absolute()
        if out.exists() and not overwrite:
            raise UsageError(f"{out} already exists: pass --overwrite to replace it")
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out} exists and is not a directory")
        if not out.parent.is_dir():
            raise UsageError(f"output parent directory does not exist: {out.parent}")
        return out

    def __enter__(self) -> "ArtifactWriter":
        self.check_target(self.out, self.overwrite)
        self.tmp = self.out.parent / f"{self.out.name}.tmp-{secrets.token_hex(4)}"
        self.tmp.mkdir()
        if threading.current_thread() is threading.main_thread():
            def _on_term(signum, frame):
                raise _Terminated()

            try:
                self._old_sigterm = signal.signal(signal.SIGTERM, _on_term)
            except (ValueError, OSError):
                self._old_sigterm = None
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._old_sigterm is not None:
            try:
                signal.signal(signal.SIGTERM, self._old_sigterm)
            except (ValueError, OSError):
                pass
        if not self.finished:
            self.abort()
        return False

    def abort(self) -> None:
        self._buf.clear()
        if self.tmp is not None and self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ content
    def add(self, packed: PackedTensor, stats: dict[str, Any] | None = None) -> None:
        """Queue one packed layer or dense tensor; a shard is written whenever the limit is reached."""
        if self.tmp is None:
            raise RuntimeError("ArtifactWriter.add outside its `with` block")
        fmt = formats.get(packed.format)
        for name, t in packed.tensors.items():
            if name in self._names:
                raise UsageError(f"tensor {name} written twice")
            self._names.add(name)
        if fmt.packed:
            self.modules[packed.module] = {**packed.meta, "shape": list(packed.shape)}
        nbytes = packed.nbytes
        rec = {"name": packed.module, "format": packed.format, "shape": list(packed.shape),
               "bytes_before": int(packed.stats.get("bytes_before", packed.numel * BASELINE_BITS // 8)),
               "bytes_after": nbytes, "bits_per_weight": round(fmt.bits_per_weight(packed), 4)}
        if fmt.packed:
            rec.update({k: v for k, v in packed.meta.items() if k != "format"})
        rec.update({k: v for k, v in packed.stats.items() if k != "bytes_before"})
        if stats:
            rec.update(stats)
        self.layers.append(rec)
        for name, t in packed.tensors.items():
            t = t.detach().to("cpu").contiguous()
            b = t.numel() * t.element_size()
            if self._buf and self._buf_bytes + b > self.max_shard_bytes:
                self._flush()
            self._buf[name] = t
            self._buf_bytes += b
            self.total_bytes += b

    def _flush(self) -> None:
        from safetensors.torch import save_file

        if not self._buf:
            return
        assert self.tmp is not None
        p = self.tmp / f"shard-{len(self._shards):05d}.safetensors"
        save_file(self._buf, str(p), metadata={"format": "pt"})
        self._shards.append((p, list(self._buf)))
        self._buf = {}
        self._buf_bytes = 0

    def finish(self, config: dict, quantization_config: dict, manifest: dict,
               copy_from: str | Path | None = None, raw_quantization_config: bool = False) -> Path:
        """Write shards, config.json, the index, manifest.json, copy tokenizer files, then rename into place.

        ``raw_quantization_config``: ``config`` already holds its final ``quantization_config`` (e.g. a GPTQ export);
        otherwise memtool's is built from ``quantization_config`` and the layers' metadata.
        """
        assert self.tmp is not None
        self._flush()
        if not self._shards:
            raise UsageError("nothing to write: the model has no tensors")
        n = len(self._shards)
        weight_map: dict[str, str] = {}
        files = []
        for i, (p, names) in enumerate(self._shards):
            final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(p, self.tmp / final)
            files.append(final)
            weight_map.update({k: final for k in names})
        if n > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.tmp / INDEX).write_text(json.dumps(index, indent=2) + "\n")
        cfg = dict(config)
        if raw_quantization_config:
            qc = cfg.get("quantization_config") or {}
        else:
            qc = {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, **quantization_config}
            for fname in sorted({m["format"] for m in self.modules.values()}):
                qc.update(formats.get(fname).config_fields())
            qc["modules"] = dict(sorted(self.modules.items()))
            cfg["quantization_config"] = qc
        (self.tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        if copy_from is not None:
            copy_aux_files(Path(copy_from), self.tmp)
        man = dict(manifest)
        man.setdefault("memtool_version", _version())
        man.setdefault("format", qc.get("format"))
        man.setdefault("format_version", FORMAT_VERSION)
        man.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        man.setdefault("hardware", hardware_summary())
        man["files"] = [{"name": f, "bytes": (self.tmp / f).stat().st_size,
                         "sha256": sha256_files([self.tmp / f])} for f in files]
        man["layers"] = self.layers
        man["totals"] = totals(self.layers)
        (self.tmp / MANIFEST).write_text(json.dumps(man, indent=2, default=str) + "\n")
        self._commit()
        self.finished = True
        return self.out

    def _commit(self) -> None:
        assert self.tmp is not None
        if self.out.exists():
            if not self.overwrite:  # appeared while we worked
                raise UsageError(f"{self.out} already exists: pass --overwrite to replace it")
            old = self.out.parent / f"{self.out.name}.old-{secrets.token_hex(4)}"
            os.rename(self.out, old)
            try:
                os.rename(self.tmp, self.out)
            except BaseException:
                os.rename(old, self.out)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, self.out)


def copy_aux_files(src: Path, dst: Path) -> list[str]:
    """Copy tokenizer and generation files (not weights, not config.json) from a model directory."""
    copied = []
    for pat in _COPY_PATTERNS:
        for p in sorted(src.glob(pat)):
            if p.is_file() and not (dst / p.name).exists() and p.suffix not in (".safetensors", ".bin"):
                shutil.copy2(p, dst / p.name)
                copied.append(p.name)
    return copied


def totals(layers: list[dict]) -> dict[str, Any]:
    before = sum(r["bytes_before"] for r in layers)
    after = sum(r["bytes_after"] for r in layers)
    packed = [r for r in layers if formats.get(r["format"]).packed]
    qw = sum(_numel(r["shape"]) for r in packed)
    qb = sum(r["bytes_after"] for r in packed)
    return {"bytes_before": before, "bytes_after": after,
            "compression_ratio": round(before / after, 4) if after else None,
            "quantized_layers": len(packed), "quantized_weights": qw,
            "avg_bits_per_quantized_weight": round(8 * qb / qw, 4) if qw else None,
            "bits_per_weight_overall": round(8 * after / max(sum(_numel(r["shape"]) for r in layers), 1), 4)}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _version() -> str:
    from memtool import __version__

    return __version__


# ---------------------------------------------------------------------------------------------------- reading
@dataclass
class Artifact:
    path: Path
    config: dict
    qconfig: dict
    manifest: dict
    headers: dict[Path, dict] = field(default_factory=dict)  # shard -> safetensors header

    @property
    def modules(self) -> dict[str, dict]:
        return self.qconfig.get("modules", {})

    def packed_modules(self) -> dict[str, dict]:
        return {k: v for k, v in self.modules.items() if formats.get(v.get("format", "?")).packed}

    def shard_files(self) -> list[Path]:
        return list(self.headers)

    def tensor_shard(self, name: str) -> Path:
        for s, h in self.headers.items():
            if name in h:
                return s
        raise KeyError(name)

    def packed(self, module: str) -> PackedTensor:
        """Load one packed layer (or a dense tensor by its name) as a PackedTensor."""
        from safetensors import safe_open

        meta = self.modules.get(module)
        if meta is None:
            shard = self.tensor_shard(module)
            with safe_open(str(shard), framework="pt") as f:
                t = f.get_tensor(module)
            return formats.get("dense").pack(module, t)
        fmt = formats.get(meta["format"])
        tensors = {}
        for name in fmt.tensor_names(module, meta):
            with safe_open(str(self.tensor_shard(name)), framework="pt") as f:
                tensors[name] = f.get_tensor(name)
        shape = self.layer_shape(module)
        return PackedTensor(fmt.name, module, tensors, dict(meta), shape)

    def layer_shape(self, module: str) -> tuple[int, ...]:
        for rec in self.manifest.get("layers", []):
            if rec.get("name") == module and "shape" in rec:
                return tuple(rec["shape"])
        meta = self.modules[module]
        if "shape" in meta:
            return tuple(meta["shape"])
        raise UsageError(f"the artifact does not record the shape of layer {module}")

    def iter_packed(self) -> Iterator[PackedTensor]:
        """Every stored unit: packed layers and dense tensors, in shard order."""
        seen: set[str] = set()
        owner = {}
        for m, meta in self.packed_modules().items():
            for n in formats.get(meta["format"]).tensor_names(m, meta):
                owner[n] = m
        for shard, h in self.headers.items():
            for name in h:
                if name == "__metadata__":
                    continue
                unit = owner.get(name, name)
                if unit in seen:
                    continue
                seen.add(unit)
                yield self.packed(unit)


def read_artifact(path: str | Path, require_manifest: bool = True) -> Artifact:
    """Open and validate a memtool artifact; every problem is a one-line UsageError."""
    from memtool.models.source import check_safetensors, safetensors_files

    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"no such artifact: {p}")
    if not p.is_dir():
        raise UsageError(f"an artifact is a directory, not a file: {p}")
    cfg_path = p / "config.json"
    if not cfg_path.exists():
        raise UsageError(f"not an artifact (no config.json): {p}")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"config.json is not valid JSON ({e.msg} at line {e.lineno}): {cfg_path}") from None
    qc = config.get("quantization_config")
    if not isinstance(qc, dict):
        raise UsageError(f"not a memtool artifact (config.json has no quantization_config): {p}")
    if qc.get("quant_method") != QUANT_METHOD:
        raise UsageError(f"not a memtool artifact (quant_method is {qc.get('quant_method')!r}): {p}")
    ver = qc.get("format_version")
    if not isinstance(ver, int) or ver < 1:
        raise UsageError(f"artifact has a bad format_version {ver!r}: {cfg_path}")
    if ver > FORMAT_VERSION:
        raise UsageError(f"artifact format version {ver} is newer than this memtool reads ({FORMAT_VERSION}): "
                         "upgrade memtool")
    if "format" in qc:
        formats.get(qc["format"])
    mods = qc.get("modules")
    if not isinstance(mods, dict):
        raise UsageError(f"artifact quantization_config has no 'modules' table: {cfg_path}")
    used = set()
    for name, meta in mods.items():
        if not isinstance(meta, dict) or "format" not in meta:
            raise UsageError(f"artifact layer {name} has no format in quantization_config.modules")
        fmt = formats.get(meta["format"])
        fmt.validate_meta(name, meta)
        used.add(fmt.name)
    for fname in sorted(used):
        formats.get(fname).check_config(qc)
    manifest: dict = {}
    mpath = p / MANIFEST
    if mpath.exists():
        try:
            manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise UsageError(f"manifest.json is not valid JSON ({e.msg} at line {e.lineno}): {mpath}") from None
        if not isinstance(manifest, dict) or "layers" not in manifest:
            raise UsageError(f"manifest.json lacks the per-layer records: {mpath}")
    elif require_manifest:
        raise UsageError(f"artifact has no manifest.json: {p}")
    shards = safetensors_files(p)
    if not shards:
        raise UsageError(f"artifact has no safetensors shards: {p}")
    headers = {s: check_safetensors(s) for s in shards}
    names = {k for h in headers.values() for k in h if k != "__metadata__"}
    for name, meta in mods.items():
        fmt = formats.get(meta["format"])
        for t in fmt.tensor_names(name, meta):
            if t not in names:
                raise UsageError(f"artifact layer {name} lacks tensor {t}")
    return Artifact(p, config, qc, manifest, headers)


def _header_bytes(h: dict) -> int:
    a, b = h["data_offsets"]
    return int(b) - int(a)


def summarize(path: str | Path) -> dict[str, Any]:
    """Per-layer rows and totals for an artifact or a plain HF safetensors directory (headers only)."""
    from memtool.models.source import check_safetensors, safetensors_files

    p = Path(path).expanduser()
    if not p.is_dir():
        raise UsageError(f"not a model directory: {p}" if p.exists() else f"no such directory: {p}")
    if not (p / "config.json").exists():
        raise UsageError(f"not a model directory (no config.json): {p}")
    try:
        cfg = json.loads((p / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"config.json is not valid JSON ({e.msg} at line {e.lineno}): {p / 'config.json'}") from None
    is_art = (cfg.get("quantization_config") or {}).get("quant_method") == QUANT_METHOD
    if not is_art and cfg.get("quantization_config"):
        qm = cfg["quantization_config"].get("quant_method")
        raise UsageError(f"{p} is quantized with {qm!r}; memtool inspect reads memtool artifacts and plain checkpoints")
    art = read_artifact(p, require_manifest=False) if is_art else None
    headers = art.headers if art else {s: check_safetensors(s) for s in safetensors_files(p)}
    if not headers:
        raise UsageError(f"no safetensors weights in {p}")
    flat = {k: v for h in headers.values() for k, v in h.items() if k != "__metadata__"}
    man_layers = {r["name"]: r for r in (art.manifest.get("layers", []) if art else [])}
    rows: list[dict] = []
    owned: set[str] = set()
    if art:
        for m, meta in art.packed_modules().items():
            fmt = formats.get(meta["format"])
            tn = fmt.tensor_names(m, meta)
            owned.update(tn)
            after = sum(_header_bytes(flat[t]) for t in tn)
            rec = man_layers.get(m, {})
            shape = rec.get("shape") or meta.get("shape")
            n = _numel(shape) if shape else None
            before = rec.get("bytes_before", n * BASELINE_BITS // 8 if n else None)
            row = {"layer": m, "format": fmt.describe(meta), "shape": "x".join(map(str, shape)) if shape else "?",
                   "bits": round(8 * after / n, 3) if n else None, "bytes_before": before, "bytes_after": after,
                   "_numel": n, "_packed": True}
            for k in ("rel_error", "output_rel_error"):
                if k in rec:
                    row[k] = rec[k]
            rows.append(row)
    for name, h in flat.items():
        if name in owned:
            continue
        n = _numel(h["shape"])
        after = _header_bytes(h)
        rec = man_layers.get(name, {})
        before = rec.get("bytes_before", after if not art else n * BASELINE_BITS // 8)
        rows.append({"layer": name, "format": f"dense {h['dtype'].lower()}", "shape": "x".join(map(str, h["shape"])),
                     "bits": round(8 * after / n, 3) if n else None, "bytes_before": before, "bytes_after": after,
                     "_numel": n, "_packed": False})
    rows.sort(key=lambda r: _natural_key(r["layer"]))
    before = sum(r["bytes_before"] or 0 for r in rows)
    after = sum(r["bytes_after"] for r in rows)
    q = [r for r in rows if r["_packed"]]
    qn = sum(r["_numel"] or 0 for r in q)
    summary = {
        "path": str(p), "artifact": bool(art),
        "format": art.qconfig.get("format") if art else "dense",
        "format_version": art.qconfig.get("format_version") if art else None,
        "layers": len(rows), "quantized_layers": len(q),
        "bytes_before": before, "bytes_after": after,
        "compression_ratio": round(before / after, 4) if after else None,
        "avg_bits_per_quantized_weight": round(8 * sum(r["bytes_after"] for r in q) / qn, 4) if qn else None,
    }
    if art:
        for k in ("bits", "group_size", "method", "calib_method"):
            if k in art.qconfig:
                summary[k] = art.qconfig[k]
    for r in rows:
        r.pop("_numel")
        r.pop("_packed")
    return {"summary": summary, "rows": rows}


def _natural_key(s: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


__all__ = ["ArtifactWriter", "Artifact", "read_artifact", "summarize", "QUANT_METHOD", "FORMAT_VERSION",
           "parse_size", "sha256_files", "hardware_summary", "copy_aux_files"]
