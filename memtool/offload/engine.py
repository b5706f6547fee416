"""The ``memtool finetune --zo`` loop: data, steps, evaluation, checkpoints, signals, resume, metrics.

Checkpoints are Hugging Face directories (``save_pretrained`` safetensors + tokenizer) with a small
``trainer_state.json`` (step, seed, config, data position and the pending update, which is always flushed
before saving). The perturbations come from a counter RNG keyed by (seed, step, parameter, k) and the batches
are a pure function of (seed, step), so a resumed run repeats the uninterrupted trajectory bit for bit on the
same device. A checkpoint is written to a temporary directory beside it and renamed into place.
SIGTERM / SIGUSR1 (SLURM's warning) ask for a checkpoint at the next step boundary and a clean exit.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from memtool.errors import UsageError
from memtool.offload import data as data_mod
from memtool.offload.streaming import find_blocks
from memtool.offload.zo import ZOConfig, ZOTrainer
from memtool.progress import Progress

STATE_FILE = "trainer_state.json"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


@dataclass
class FinetuneOptions:
    model: str
    data: str
    steps: int = 100
    seq_len: int = 256
    batch_size: int = 4
    zo: ZOConfig = field(default_factory=ZOConfig)
    offload: str = "auto"
    device: str = "auto"
    dtype: str = "fp32"
    gpu_memory: float | None = None
    eval_every: int = 0
    eval_frac: float = 0.1
    max_eval: int = 64
    save_every: int = 0
    output: str = "finetune-out"
    resume: str | None = None
    metrics: str | None = None
    allow_pickle: bool = False
    save_final: bool = True


# ---- model I/O -------------------------------------------------------------------------------------------
def check_supported_config(config) -> None:
    q = config.get("quantization_config") if isinstance(config, dict) else getattr(config, "quantization_config",
                                                                                     None)
    if q is None:
        return
    qm = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    if str(qm).lower() == "memtool":
        raise UsageError("fine-tuning a LUT-quantized (memtool) base is not supported yet; "
                         "fine-tune the unquantized model and quantize afterwards")
    raise UsageError(f"fine-tuning a quantized base (quant_method {qm!r}) is not supported yet")


def load_model_and_tokenizer(spec: str, dtype: torch.dtype, allow_pickle: bool = False,
                             progress: Progress | None = None):
    """(model on CPU in ``dtype``, tokenizer) through memtool.models, or transformers for a local HF dir."""
    try:
        from memtool.models import load_model, load_tokenizer, resolve  # type: ignore
    except ImportError:
        resolve = None
    if resolve is not None:
        ref = resolve(spec, allow_pickle=allow_pickle, progress=progress)
        check_supported_config(ref.config)
        model = load_model(ref, dtype=dtype, device="cpu")
        tok = load_tokenizer(ref)
    else:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        path = Path(spec).expanduser()
        if not (path / "config.json").is_file():
            raise UsageError(f"model not found: {spec} (expected a Hugging Face directory)")
        check_supported_config(AutoConfig.from_pretrained(path))
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tok = AutoTokenizer.from_pretrained(path)
    model.eval()
    return model, tok


def _atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    write(tmp)
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def save_checkpoint(trainer: ZOTrainer, model, tok, path: Path, state: dict) -> Path:
    """Flush the pending update and write an HF directory + trainer_state.json atomically."""
    trainer.flush()
    state = dict(state, pending=trainer.pending_json())

    def write(tmp: Path) -> None:
        sd = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
        model.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
        if tok is not None:
            tok.save_pretrained(tmp)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))

    _atomic_dir(path, write)
    return path


def find_checkpoint(spec: str) -> Path:
    """A checkpoint directory: ``spec`` itself, or the newest checkpoint-N (else final) inside it."""
    p = Path(spec).expanduser()
    if (p / STATE_FILE).is_file():
        return p
    cands = sorted((c for c in p.glob("checkpoint-*") if (c / STATE_FILE).is_file()),
                   key=lambda c: int(c.name.split("-")[-1]) if c.name.split("-")[-1].isdigit() else -1)
    if cands:
        return cands[-1]
    if (p / "final" / STATE_FILE).is_file():
        return p / "final"
    raise UsageError(f"no checkpoint to resume from in {spec} (no {STATE_FILE})")


# ---- signals -----------------------------------------------------------------------------------------------
class StopRequest:
    """SIGTERM / SIGUSR1 set a flag; the loop saves and stops at the next step boundary."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.signame: str | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        self.signame = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
        return False


# ---- the loop ----------------------------------------------------------------------------------------------
def _pick_device(spec: str) -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda requested but no CUDA device is available")
    return dev


def _estimate_reserve(model, blocks, opts: FinetuneOptions) -> int:
    """Device bytes besides resident blocks: non-block weights, hidden states of all copies, one chunk's
    activations and logits."""
    cfg = model.config
    h = getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 1024)
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "ffn_dim", None) or 4 * h
    vocab = getattr(cfg, "vocab_size", 32000)
    block_ids = {id(p) for b in blocks for p in b.parameters()}
    other = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in block_ids)
    b, t = opts.batch_size // max(1, opts.zo.grad_accum), opts.seq_len
    rows = 2 * opts.zo.n_perturb * opts.batch_size
    item = torch.finfo(DTYPES.get(opts.dtype, torch.float32)).bits // 8
    hidden = 3 * rows * t * h * item
    act = b * t * (4 * h + 3 * inter) * item * 2
    logits = 3 * b * t * vocab * 4
    return int(other + hidden + act + logits + (512 << 20))


def run_finetune(opts: FinetuneOptions, progress: Progress | None = None,
                 on_step: Callable[[dict], None] | None = None) -> dict:
    """Fine-tune with zeroth-order steps; returns a summary (see the CLI for the fields)."""
    progress = progress or Progress()
    zo = opts.zo
    zo.validate()
    if opts.steps < 1:
        raise UsageError(f"--steps must be >= 1 (got {opts.steps})")
    if opts.batch_size < 1 or opts.batch_size % zo.grad_accum:
        raise UsageError(f"--batch-size {opts.batch_size} must be a positive multiple of --grad-accum {zo.grad_accum}")
    if opts.dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of fp32, bf16, fp16 (got {opts.dtype!r})")
    if opts.offload not in ("auto", "on", "off"):
        raise UsageError(f"--offload must be auto, on or off (got {opts.offload!r})")
    if opts.seq_len < 2:
        raise UsageError(f"--seq-len must be >= 2 (got {opts.seq_len})")
    data_mod.check_data_spec(opts.data)
    device = _pick_device(opts.device)
    dtype = DTYPES[opts.dtype]
    if opts.gpu_memory is not None:
        if device.type != "cuda":
            raise UsageError("--gpu-memory needs a CUDA device")
        total = torch.cuda.get_device_properties(device).total_memory
        frac = opts.gpu_memory * (1 << 30) / total
        if not 0 < frac <= 1:
            raise UsageError(f"--gpu-memory {opts.gpu_memory} GB is not within the device's "
                             f"{total / (1 << 30):.1f} GB")
        torch.cuda.set_per_process_memory_fraction(
            frac, device.index if device.index is not None else torch.cuda.current_device())

    start_step, resumed_from, state_in = 0, None, None
    model_spec = opts.model
    if opts.resume:
        ck = find_checkpoint(opts.resume)
        state_in = json.loads((ck / STATE_FILE).read_text())
        start_step = int(state_in["step"])
        zo.seed = int(state_in.get("seed", zo.seed))
        resumed_from = str(ck)
        model_spec = str(ck)
        if state_in.get("pending"):
            raise UsageError(f"checkpoint {ck} holds an unflushed update; it was not written by memtool")
        if start_step >= opts.steps:
            raise UsageError(f"checkpoint {ck} is at step {start_step}, not before --steps {opts.steps}")
    zo.total_steps = opts.steps

    progress.log(f"loading {model_spec} ({opts.dtype})")
    model, tok = load_model_and_tokenizer(model_spec, dtype, opts.allow_pickle, progress)
    _, blocks = find_blocks(model)
    data = data_mod.load_data(opts.data, tok, opts.seq_len)
    train, heldout = data_mod.split_heldout(data, opts.eval_frac if opts.eval_every > 0 else 0.0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    limit = int(opts.gpu_memory * (1 << 30)) if opts.gpu_memory is not None else None
    trainer = ZOTrainer(model, zo, device, opts.offload, reserve_bytes=_estimate_reserve(model, blocks, opts),
                        limit_bytes=limit)
    trainer.step = start_step
    n_off = trainer.streamer.n_offloaded
    progress.log(f"{len(train)} training examples ({train.kind}), {len(heldout) if heldout else 0} held out; "
                 f"{len(blocks)} blocks, {n_off} streamed from host memory; "
                 f"{trainer.n_trainable / 1e6:.2f} M trainable parameters on {device}")

    out_dir = Path(opts.output).expanduser()
    metrics_f = open(opts.metrics, "a" if opts.resume else "w") if opts.metrics else None
    history: list[dict] = []
    evals: list[dict] = []
    interrupted = None
    ckpts: list[str] = []

    def state(step: int) -> dict:
        return {"format": 1, "step": step, "seed": zo.seed, "config": zo.to_json(), "steps": opts.steps,
                "batch_size": opts.batch_size, "seq_len": opts.seq_len, "data": opts.data,
                "rng": {"kind": "counter", "key": ["seed", "step", "param", "k"]}, "model": opts.model}

    def emit(rec: dict) -> None:
        if metrics_f:
            metrics_f.write(json.dumps(rec) + "\n")
            metrics_f.flush()

    def do_eval(step: int) -> float:
        loss = trainer.evaluate(data_mod.eval_batches(heldout, opts.batch_size, opts.max_eval))
        evals.append({"step": step, "eval_loss": loss})
        emit({"event": "eval", "step": step, "eval_loss": loss})
        progress.log(f"step {step}: eval loss {loss:.4f}")
        return loss

    t_start = time.perf_counter()
    tokens_total = 0
    try:
        with StopRequest() as stop, progress.task("zo fine-tune", total=opts.steps - start_step) as task:
            for step in range(start_step + 1, opts.steps + 1):
                ids, labels = data_mod.get_batch(train, opts.batch_size, step, zo.seed)
                up0, down0 = trainer.streamer.bytes_up, trainer.streamer.bytes_down
                t0 = time.perf_counter()
                rec = trainer.train_step(ids, labels)
                dt = time.perf_counter() - t0
                moved = trainer.streamer.bytes_up - up0 + trainer.streamer.bytes_down - down0
                ntok = ids.numel()
                tokens_total += ntok
                rec.update(event="step", step_s=dt, tokens_per_s=ntok / dt if dt > 0 else 0.0,
                           pcie_gbps=moved / dt / 1e9 if dt > 0 else 0.0)
                if device.type == "cuda":
                    rec["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / (1 << 30)
                history.append(rec)
                emit(rec)
                info = f"loss {rec['loss']:.4f} {rec['tokens_per_s']:.0f} tok/s"
                if device.type == "cuda":
                    info += f" gpu {rec['gpu_mem_gb']:.1f} GB pcie {rec['pcie_gbps']:.1f} GB/s"
                task.advance(1, info)
                if on_step is not None:
                    on_step(rec)
                if heldout is not None and opts.eval_every > 0 and step % opts.eval_every == 0:
                    do_eval(step)
                last = step == opts.steps
                if stop.signame is not None and not last:
                    p = save_checkpoint(trainer, model, tok, out_dir / f"checkpoint-{step}", state(step))
                    ckpts.append(str(p))
                    interrupted = stop.signame
                    emit({"event": "interrupted", "step": step, "signal": stop.signame, "checkpoint": str(p)})
                    progress.log(f"{stop.signame}: saved {p} at step {step}; resume with --resume {out_dir}")
                    break
                if opts.save_every > 0 and step % opts.save_every == 0 and not last:
                    p = save_checkpoint(trainer, model, tok, out_dir / f"checkpoint-{step}", state(step))
                    ckpts.append(str(p))
                    emit({"event": "checkpoint", "step": step, "path": str(p)})
            final_step = history[-1]["step"] if history else start_step
            if interrupted is None:
                if heldout is not None and opts.eval_every > 0 and (not evals or evals[-1]["step"] != final_step):
                    do_eval(final_step)
                if opts.save_final:
                    p = save_checkpoint(trainer, model, tok, out_dir / "final", state(final_step))
                    ckpts.append(str(p))
            trainer.flush()
    finally:
        if metrics_f:
            metrics_f.close()
        trainer.close()
    wall = time.perf_counter() - t_start
    peak = torch.cuda.max_memory_allocated(device) / (1 << 30) if device.type == "cuda" else None
    steps_done = [h for h in history]
    tail = steps_done[-min(len(steps_done), 10):]
    return {
        "model": opts.model, "device": str(device), "dtype": opts.dtype, "blocks": len(blocks),
        "blocks_streamed": n_off, "trainable_params": trainer.n_trainable, "start_step": start_step,
        "end_step": final_step, "first_loss": steps_done[0]["loss"] if steps_done else None,
        "last_loss": steps_done[-1]["loss"] if steps_done else None,
        "mean_loss_last10": sum(h["loss"] for h in tail) / len(tail) if tail else None,
        "eval": evals, "tokens_per_s": tokens_total / wall if wall > 0 else 0.0,
        "step_s": sum(h["step_s"] for h in steps_done) / max(1, len(steps_done)),
        "pcie_gbps": (sum(h["pcie_gbps"] * h["step_s"] for h in steps_done) /
                      max(1e-9, sum(h["step_s"] for h in steps_done))),
        "peak_gpu_gb": peak, "checkpoints": ckpts, "interrupted": interrupted, "resumed_from": resumed_from,
        "history": history,
    }


__all__ = ["FinetuneOptions", "run_finetune", "save_checkpoint", "find_checkpoint", "load_model_and_tokenizer",
           "check_supported_config", "StopRequest"]
