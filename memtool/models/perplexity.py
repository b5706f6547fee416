"""Perplexity and next-token agreement with a base model, over fixed token windows.

Protocol: the windows come from ``corpus.token_windows`` (seq_len, stride, n_windows); in each window after
the first only positions >= score_from are scored; perplexity = exp(mean NLL over scored tokens). With a base
model, for the same scored positions: mean KL(base || model) of the next-token distributions and the fraction
of positions whose top-1 tokens agree.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F

from memtool.progress import Progress


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, use_cache=False)
    return (out.logits if hasattr(out, "logits") else out[0]).float()


@torch.inference_mode()
def evaluate(model, windows: torch.Tensor, score_from: int = 0, base=None, device: str | torch.device = "cpu",
             progress: Progress | None = None) -> dict:
    progress = progress or Progress()
    nll_sum, n_tok, kl_sum, agree = 0.0, 0, 0.0, 0
    t0 = time.perf_counter()
    with progress.task("perplexity" + (" + KL vs base" if base is not None else ""), total=len(windows)) as t:
        for i, w in enumerate(windows):
            ids = w.unsqueeze(0).to(device)
            start = 0 if i == 0 else score_from
            logits = _logits(model, ids)[0, start:-1]
            target = ids[0, start + 1 :]
            logp = F.log_softmax(logits, dim=-1)
            nll_sum += -logp.gather(1, target.unsqueeze(1)).sum().item()
            n_tok += target.numel()
            if base is not None:
                blogp = F.log_softmax(_logits(base, ids)[0, start:-1], dim=-1)
                kl_sum += (blogp.exp() * (blogp - logp)).sum().item()
                agree += (blogp.argmax(-1) == logp.argmax(-1)).sum().item()
            t.advance(1, f"ppl {math.exp(nll_sum / n_tok):.3f}")
    res = {"perplexity": math.exp(nll_sum / n_tok), "mean_nll": nll_sum / n_tok, "tokens_scored": n_tok,
           "seconds": time.perf_counter() - t0}
    if base is not None:
        res["kl_mean"] = max(kl_sum / n_tok, 0.0) if abs(kl_sum / n_tok) < 1e-12 else kl_sum / n_tok
        res["top1_agreement"] = agree / n_tok
    return res
