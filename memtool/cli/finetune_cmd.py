"""`memtool finetune MODEL --zo --data FILE`: zeroth-order fine-tuning, blocks streamed from host memory."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from memtool.cli.common import AllowPickleOpt, DebugOpt, JsonOpt, QuietOpt, Result, run, usage


def register(app: typer.Typer) -> None:
    @app.command("finetune")
    def finetune(
        model: Annotated[str, typer.Argument(help="HF directory, hub id in the cache, or 'default'.")],
        data: Annotated[Optional[str], typer.Option("--data", help="Text file, JSONL of {prompt, completion}, "
                                                     "or hf:NAME[:SPLIT] (a cached dataset).")] = None,
        zo: Annotated[bool, typer.Option("--zo", help="Zeroth-order (MeZO/SPSA) training: forward passes only.")] = False,
        offload: Annotated[str, typer.Option("--offload", help="Stream blocks from host memory: auto|on|off.")] = "auto",
        steps: Annotated[int, typer.Option("--steps", help="Training steps.")] = 100,
        lr: Annotated[float, typer.Option("--lr", help="Learning rate (MeZO full: 1e-6..1e-7).")] = 1e-6,
        eps: Annotated[float, typer.Option("--eps", help="Perturbation scale.")] = 1e-3,
        seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per example.")] = 256,
        batch_size: Annotated[int, typer.Option("--batch-size", help="Examples per step.")] = 4,
        grad_accum: Annotated[int, typer.Option("--grad-accum", help="Micro-batches per step (split the batch).")] = 1,
        n_perturb: Annotated[int, typer.Option("--n-perturb", help="Perturbations per step (averaged).")] = 1,
        weight_decay: Annotated[float, typer.Option("--weight-decay", help="Decoupled weight decay "
                                                    "(not on norms/biases).")] = 0.0,
        schedule: Annotated[str, typer.Option("--schedule", help="constant|linear|cosine.")] = "constant",
        warmup: Annotated[int, typer.Option("--warmup", help="Linear warmup steps.")] = 0,
        trainable: Annotated[Optional[list[str]], typer.Option("--trainable", help="Train only parameters whose "
                             "name matches (glob, or substring; repeat or comma-separate).")] = None,
        eval_every: Annotated[int, typer.Option("--eval-every", help="Held-out loss every N steps (0: never).")] = 0,
        save_every: Annotated[int, typer.Option("--save-every", help="Checkpoint every N steps (0: never).")] = 0,
        output: Annotated[str, typer.Option("--output", "-o", help="Output directory (checkpoint-N/, final/).")] = "finetune-out",
        resume: Annotated[Optional[str], typer.Option("--resume", help="Continue from a checkpoint "
                                                      "(or an output directory: its newest checkpoint).")] = None,
        seed: Annotated[int, typer.Option("--seed", help="Seed of perturbations and batch order.")] = 0,
        device: Annotated[str, typer.Option("--device", help="auto|cpu|cuda|cuda:N.")] = "auto",
        dtype: Annotated[str, typer.Option("--dtype", help="Weights: fp32 (default) | bf16 | fp16.")] = "fp32",
        gpu_memory: Annotated[Optional[float], typer.Option("--gpu-memory", help="Cap GPU memory (GB).")] = None,
        wire_dtype: Annotated[str, typer.Option("--wire-dtype", help="Dtype of blocks on PCIe: auto (= --dtype).")] = "auto",
        metrics: Annotated[Optional[str], typer.Option("--metrics", help="Append per-step JSON lines here.")] = None,
        allow_pickle: AllowPickleOpt = False,
        json_: JsonOpt = False,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        """Fine-tune a causal LM with zeroth-order steps (MeZO), streaming blocks through the GPU (ZO2)."""

        def body(progress):
            if not zo:
                usage("first-order fine-tuning engines are not available yet; use --zo (zeroth-order)")
            if data is None:
                usage("--data FILE is required")
            if wire_dtype not in ("auto", dtype):
                usage(f"--wire-dtype {wire_dtype} different from --dtype {dtype} is not supported yet")
            from memtool.offload.engine import FinetuneOptions, run_finetune
            from memtool.offload.zo import ZOConfig

            cfg = ZOConfig(lr=lr, eps=eps, n_perturb=n_perturb, weight_decay=weight_decay, schedule=schedule,
                           warmup_steps=warmup, grad_accum=grad_accum, trainable=list(trainable or []), seed=seed)
            opts = FinetuneOptions(model=model, data=data, steps=steps, seq_len=seq_len, batch_size=batch_size,
                                   zo=cfg, offload=offload, device=device, dtype=dtype, gpu_memory=gpu_memory,
                                   eval_every=eval_every, save_every=save_every, output=output, resume=resume,
                                   metrics=metrics, allow_pickle=allow_pickle)
            s = run_finetune(opts, progress)
            rows = [{"step": h["step"], "loss": h["loss"], "proj_grad": h["proj_grad"][0], "lr": h["lr"],
                     "tokens/s": h["tokens_per_s"]} for h in _thin(s["history"])]
            meta = {k: s[k] for k in ("model", "device", "dtype", "blocks", "blocks_streamed", "trainable_params",
                                      "start_step", "end_step", "first_loss", "last_loss", "mean_loss_last10",
                                      "tokens_per_s", "step_s", "pcie_gbps", "peak_gpu_gb", "checkpoints",
                                      "resumed_from", "interrupted")}
            if s["eval"]:
                meta["eval"] = s["eval"]
            notes = []
            if s["interrupted"]:
                notes.append(f"stopped by {s['interrupted']} after step {s['end_step']}; checkpoint "
                             f"{s['checkpoints'][-1]}; continue with --resume {output}")
            return Result("zo fine-tune", rows=rows, meta=meta, notes=notes)

        run(body, json_=json_, quiet=quiet, debug=debug)


def _thin(history: list[dict], keep: int = 20) -> list[dict]:
    if len(history) <= keep:
        return history
    stride = -(-len(history) // keep)
    out = history[::stride]
    return out if out[-1] is history[-1] else out + [history[-1]]
