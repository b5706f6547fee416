"""Per-layer input statistics from calibration tokens, streamed one decoder block at a time.

``collect_hessians_blockwise`` finds the model's list of decoder blocks, captures the inputs of block 0 (a
pre-hook stores the hidden states and the call's other arguments, such as the attention mask and position
embeddings, then stops the forward with an exception), and then walks the blocks: block i is moved to
``device``, its linear layers are hooked to accumulate ``X^T X`` of their inputs, and the caller receives
``(i, {name: H})`` with ``H = 2/n X^T X``. When the caller resumes the generator, block i is run again on the
same inputs -- now with whatever the caller did to its weights (sequential GPTQ quantizes them) -- and its
outputs become block i+1's inputs. Only one block (plus the captured activations) is on ``device`` at a time.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from memtool.errors import UsageError
from memtool.progress import Progress


class _Stop(Exception):
    pass


def is_linear(m: nn.Module) -> bool:
    """nn.Linear, or transformers' Conv1D (GPT-2; its weight is stored [in, out])."""
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of decoder blocks: the longest list of same-class modules that contain linear layers."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or len(m) == 0:
            continue
        if len({type(b) for b in m}) != 1 or not any(is_linear(x) for x in m[0].modules()):
            continue
        if best is None or len(m) > len(best[1]):
            best = (name, m)
    if best is None:
        raise UsageError(f"cannot find the decoder blocks of {type(model).__name__}")
    return best


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in block.named_modules() if n and is_linear(m)}


def _move_outside(module: nn.Module, blocks: nn.ModuleList, device) -> None:
    """Move every parameter and buffer of ``module`` except those inside ``blocks``."""
    for child in module.children():
        if child is blocks:
            continue
        if any(m is blocks for m in child.modules()):
            _move_outside(child, blocks, device)
        else:
            child.to(device)
    for n, p in list(module._parameters.items()):
        if p is not None:
            p.data = p.data.to(device)
    for n, b in list(module._buffers.items()):
        if b is not None:
            module._buffers[n] = b.to(device)


def _to(x, device):
    if torch.is_tensor(x):
        return x.to(device)
    if isinstance(x, tuple):
        return tuple(_to(v, device) for v in x)
    if isinstance(x, list):
        return [_to(v, device) for v in x]
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


@torch.no_grad()
def capture_block_inputs(model: nn.Module, calib_ids: torch.Tensor, device, batch_size: int = 8):
    """Inputs of block 0 for each calibration batch: a list of ``(hidden, args, kwargs)``."""
    _, blocks = find_blocks(model)
    home = next(model.parameters()).device
    device = torch.device(device)
    captured = []

    def hook(mod, args, kwargs):
        captured.append((args[0], tuple(args[1:]), dict(kwargs)))
        raise _Stop

    h = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    if device != home:
        _move_outside(model, blocks, device)
    try:
        for s in range(0, len(calib_ids), batch_size):
            try:
                model(input_ids=calib_ids[s:s + batch_size].to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        h.remove()
        if device != home:
            _move_outside(model, blocks, home)
    return captured


def _run_block(block, captured):
    outs = []
    for x, args, kwargs in captured:
        y = block(x, *args, **kwargs)
        outs.append(y[0] if isinstance(y, (tuple, list)) else y)
    return outs


@torch.no_grad()
def collect_hessians_blockwise(model: nn.Module, calib_ids: torch.Tensor, device="cpu",
                               progress: Progress | None = None, batch_size: int = 8, sequential: bool = True,
                               acc_dtype: torch.dtype = torch.float32) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
    """Yield ``(block_index, {linear_name: H [in, in]})`` block by block (names relative to the block).

    ``sequential=True``: block i's outputs are computed after the caller resumes the generator, i.e. with the
    weights as the caller left them (quantized). ``sequential=False``: from the original weights, in the same
    pass that collects the statistics.
    """
    progress = progress or Progress()
    if calib_ids.dim() != 2 or len(calib_ids) == 0:
        raise UsageError(f"calibration ids must be [n, seq] with n >= 1, got shape {tuple(calib_ids.shape)}")
    _, blocks = find_blocks(model)
    device = torch.device(device)
    captured = capture_block_inputs(model, calib_ids, device, batch_size)
    with progress.task("calibrate blocks", total=len(blocks)) as task:
        for i, block in enumerate(blocks):
            home = next(block.parameters()).device
            block.to(device)
            lin = block_linears(block)
            H = {n: None for n in lin}
            count = {n: 0 for n in lin}
            cache: dict = {}

            def make_hook(name):
                def hook(mod, inp, out):
                    x = inp[0]
                    if cache.get("x") is not x:  # q/k/v (and gate/up) share one input: one X^T X per batch
                        x2 = x.reshape(-1, x.shape[-1]).to(acc_dtype)
                        cache.update(x=x, xtx=x2.T @ x2, n=x2.shape[0])
                    xtx, n = cache["xtx"], cache["n"]
                    H[name] = xtx.clone() if H[name] is None else H[name].add_(xtx)
                    count[name] += n
                return hook

            hooks = [m.register_forward_hook(make_hook(n)) for n, m in lin.items()]
            try:
                outs = _run_block(block, captured)
            finally:
                for h in hooks:
                    h.remove()
                cache.clear()
            stats = {n: H[n].mul_(2.0 / count[n]) for n in lin if H[n] is not None}
            yield i, stats
            if sequential:
                del outs
                outs = _run_block(block, captured)
            captured = [(y, args, kwargs) for y, (_, args, kwargs) in zip(outs, captured)]
            block.to(home)
            task.advance(1, f"block {i}")
