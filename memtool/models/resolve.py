"""Resolve a MODEL argument: a local HF directory, a GGUF file, a hub id, or the word ``default``."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from memtool.errors import UsageError
from memtool.models.source import PICKLE_SUFFIXES, check_safetensors, safetensors_files
from memtool.progress import Progress

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.tiktoken"]


@dataclass
class ModelRef:
    spec: str  # what the user typed
    kind: str  # "dir" | "gguf" | "hub" | "default"
    path: Path  # an HF directory with config.json
    config: dict = field(default_factory=dict)
    pickle_files: list[Path] = field(default_factory=list)  # only when allowed

    @property
    def quant_method(self) -> str | None:
        return (self.config.get("quantization_config") or {}).get("quant_method")

    @property
    def is_artifact(self) -> bool:
        """A memtool packed artifact (config.quantization_config.quant_method == "memtool")."""
        return self.quant_method == "memtool"


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _read_config(d: Path) -> dict:
    cfg = d / "config.json"
    if not cfg.exists():
        raise UsageError(f"not a model directory (no config.json): {d}")
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"config.json is not valid JSON ({e.msg} at line {e.lineno}): {cfg}") from None


def _check_dir(d: Path, spec: str, kind: str, allow_pickle: bool) -> ModelRef:
    config = _read_config(d)
    shards = safetensors_files(d)
    for s in shards:
        check_safetensors(s)
    pickles = [p for p in sorted(d.iterdir()) if p.suffix in PICKLE_SUFFIXES and p.is_file()]
    if not shards:
        if pickles and not allow_pickle:
            raise UsageError(f"{d} has only pickle weights ({pickles[0].name}); loading them can run arbitrary "
                             "code: pass --allow-pickle if you trust the source")
        if not pickles:
            raise UsageError(f"no weights (*.safetensors) in {d}")
    return ModelRef(spec, kind, d, config, pickles if (allow_pickle and not shards) else [])


def resolve(spec: str, *, allow_pickle: bool = False, progress: Progress | None = None) -> ModelRef:
    """Turn a MODEL argument into a local HF directory, converting or downloading when needed."""
    from memtool.models import default as dflt

    if spec == "default":
        return _check_dir(dflt.ensure_default(progress), spec, "default", allow_pickle)
    p = Path(spec).expanduser()
    if p.exists():
        if p.is_dir():
            return _check_dir(p, spec, "dir", allow_pickle)
        if p.suffix == ".gguf":
            return _check_dir(dflt.ensure_gguf(p, progress), spec, "gguf", allow_pickle)
        if p.suffix in PICKLE_SUFFIXES:
            raise UsageError(f"{p} is a pickle checkpoint; memtool loads HF directories (config.json + "
                             "safetensors)" + ("" if allow_pickle else "; pickle also needs --allow-pickle"))
        if p.suffix == ".safetensors":
            raise UsageError(f"{p} is a bare safetensors file; pass the directory that holds it and config.json")
        raise UsageError(f"not a model (expected a directory, a .gguf file or a hub id): {p}")
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith(
        (".gguf", ".safetensors") + PICKLE_SUFFIXES)
    if looks_like_path or not _HUB_ID.match(spec):
        raise UsageError(f"no such file or directory: {spec}")
    return _check_dir(_from_hub(spec), spec, "hub", allow_pickle)


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # older hub versions
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import LocalEntryNotFoundError  # type: ignore
    offline = _offline()
    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_PATTERNS, local_files_only=offline))
    except LocalEntryNotFoundError:
        how = (f"run `huggingface-cli download {repo_id}` on a machine with internet (same HF_HOME), "
               "or pass a local directory")
        if offline:
            raise UsageError(f"'{repo_id}' is not in the Hugging Face cache and HF_HUB_OFFLINE is set: {how}") from None
        raise UsageError(f"could not fetch '{repo_id}' from the hub (no connection?) and it is not cached: {how}") from None
    except Exception as e:  # noqa: BLE001 - repository not found, gated, HTTP errors
        raise UsageError(f"cannot get '{repo_id}' from the Hugging Face hub: {str(e).splitlines()[0]}") from None
