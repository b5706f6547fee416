import math

import torch

from memtool.models.perplexity import evaluate
from memtool.models.tiny import tiny_model


def _reference(model, windows, score_from, base=None):
    """Independent float64 reference with an explicit per-position loop."""
    nll, n, kl, agree = 0.0, 0, 0.0, 0
    with torch.no_grad():
        for i, w in enumerate(windows):
            lg = model(w[None]).logits[0].double()
            bl = base(w[None]).logits[0].double() if base is not None else None
            for pos in range(0 if i == 0 else score_from, len(w) - 1):
                lp = lg[pos] - torch.logsumexp(lg[pos], 0)
                nll -= lp[w[pos + 1]].item()
                n += 1
                if base is not None:
                    bp = bl[pos] - torch.logsumexp(bl[pos], 0)
                    kl += (bp.exp() * (bp - lp)).sum().item()
                    agree += int(bp.argmax() == lp.argmax())
    return math.exp(nll / n), n, kl / n, agree / n


def test_perplexity_and_kl_match_reference():
    m, b = tiny_model("llama", seed=1), tiny_model("llama", seed=2)
    windows = torch.randint(0, 256, (3, 33), generator=torch.Generator().manual_seed(0))
    res = evaluate(m, windows, score_from=10, base=b)
    ppl, n, kl, agree = _reference(m, windows, 10, b)
    assert res["tokens_scored"] == n == 32 + 2 * 22
    assert abs(res["perplexity"] - ppl) / ppl < 1e-5
    assert abs(res["kl_mean"] - kl) < 1e-5 and kl > 0
    assert res["top1_agreement"] == agree


def test_same_model_gives_zero_kl():
    m = tiny_model("llama", seed=3)
    windows = torch.randint(0, 256, (2, 17), generator=torch.Generator().manual_seed(1))
    res = evaluate(m, windows, base=tiny_model("llama", seed=3))
    assert res["kl_mean"] == 0.0 and res["top1_agreement"] == 1.0
