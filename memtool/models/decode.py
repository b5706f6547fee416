"""Batch-1 decoding with a static KV cache, each decode step replayed from a CUDA graph.

transformers' ``generate`` launches every kernel of every step from Python: on a 7B model that is tens of
milliseconds a token whatever the weights (docs/BENCHMARKS.md: 8-21 tokens/s on an H100 or H200, fp16 and LUT
weights alike). Here the prompt is run once into a :class:`transformers.StaticCache`, one decode step (the model on
a token at a position, writing its cache slot) is captured in a CUDA graph, and each new token is one replay plus
the choice of the next token (greedy, or temperature + nucleus sampling from a seeded generator). Without
``graph`` the same loop runs eagerly (CPU, and the reference the tests check against a full forward pass).
"""

from __future__ import annotations

import time
from typing import Optional

import torch


def static_cache(model, max_len: int):
    """A transformers StaticCache of ``max_len`` positions for batch 1 (the 5.x and the 4.x signatures)."""
    from transformers import StaticCache

    try:
        return StaticCache(config=model.config, max_cache_len=max_len)
    except TypeError:  # transformers 4.x
        p = next(model.parameters())
        return StaticCache(config=model.config, max_batch_size=1, max_cache_len=max_len, device=p.device,
                           dtype=p.dtype)  # fmt: skip


def _cache_arg(model) -> str:
    """The forward argument that takes the cache: ``cache`` (newer transformers) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def choose(logits: torch.Tensor, temperature: float, top_p: float, gen: Optional[torch.Generator]) -> torch.Tensor:
    """The next token [1, 1] from logits [1, V]: argmax when ``temperature`` is 0, else a sample of
    softmax(logits / temperature) restricted to the smallest set of top tokens whose mass reaches ``top_p``."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = torch.softmax(logits.float() / temperature, -1)
    if top_p < 1:
        sp, idx = probs.sort(-1, descending=True)
        keep = sp.cumsum(-1) - sp < top_p  # a token stays while the mass before it is below top_p (the top one always)
        probs = torch.zeros_like(probs).scatter_(-1, idx, sp * keep)
    return torch.multinomial(probs, 1, generator=gen)


def static_generate(model, ids: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.0, top_p: float = 1.0,
                    seed: int = 0, eos_token_id: Optional[int] = None, graph: bool = True,
                    stats: Optional[dict] = None) -> torch.Tensor:  # fmt: skip
    """New tokens (1-D, at most ``max_new_tokens``; ends after ``eos_token_id``) continuing ``ids`` [1, P]. ``graph``:
    replay the decode step from a CUDA graph (CUDA models only; capture errors propagate). ``stats``: filled with
    the seconds of the prompt (``prefill_s``, up to the first new token), of the steps before the loop settles (the
    eager warm-up step and the capture, ``setup_s``) and of the ``steps`` after them (``decode_s``), each timed
    after a device synchronisation."""
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise ValueError(f"static_generate takes one prompt [1, P], got shape {list(ids.shape)}")
    dev = ids.device
    if graph and dev.type != "cuda":
        raise ValueError("a CUDA graph needs the model on a CUDA device")
    gen = torch.Generator(device=dev).manual_seed(seed) if temperature > 0 else None
    p = ids.shape[1]
    cache = {_cache_arg(model): static_cache(model, p + max_new_tokens)}
    out = torch.empty(max_new_tokens, dtype=torch.long, device=dev)
    clock = _Clock(dev, stats)
    with torch.inference_mode():
        logits = model(input_ids=ids, cache_position=torch.arange(p, device=dev), **cache).logits
        tok = choose(logits[:, -1], temperature, top_p, gen)
        pos = torch.full((1,), p, dtype=torch.long, device=dev)
        clock.lap("prefill_s")

        def step():
            return model(input_ids=tok, cache_position=pos, **cache).logits[:, -1]

        replay = None
        settled = 2 if graph else 0  # steps from this one on are the steady state (replays, or eager steps)
        n = 0
        for i in range(max_new_tokens):
            out[i] = tok[0, 0]
            n = i + 1
            if i == settled:
                clock.lap("setup_s")
            if n == max_new_tokens or (eos_token_id is not None and int(tok) == eos_token_id):
                break
            if not graph:
                logits = step()
            elif i == 0:  # the first step runs eagerly on a side stream: kernels tuned, lazy buffers made
                s = torch.cuda.Stream(dev)
                s.wait_stream(torch.cuda.current_stream(dev))
                with torch.cuda.stream(s):
                    logits = step()
                torch.cuda.current_stream(dev).wait_stream(s)
            else:
                if replay is None:
                    replay = _capture(step)
                logits = replay()
            tok.copy_(choose(logits, temperature, top_p, gen))
            pos.add_(1)
        clock.lap("decode_s" if n > settled else "setup_s")
        if stats is not None:
            stats["steps"] = max(0, n - 1 - settled)
    return out[:n].clone()


class _Clock:
    """Wall time between laps after a device synchronisation, added into ``stats`` (nothing when it is None)."""

    def __init__(self, dev, stats: Optional[dict]):
        self.dev, self.stats = dev, stats
        self.t = self._now() if stats is not None else 0.0
        if stats is not None:
            stats.update(prefill_s=0.0, setup_s=0.0, decode_s=0.0)

    def _now(self) -> float:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        return time.perf_counter()

    def lap(self, key: str) -> None:
        if self.stats is not None:
            t = self._now()
            self.stats[key] += t - self.t
            self.t = t


def _capture(step):
    """A CUDA graph of ``step`` and a function that replays it and returns its (static) output."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        res = step()

    def replay():
        g.replay()
        return res

    return replay
