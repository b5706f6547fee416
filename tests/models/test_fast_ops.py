"""use_fast_ops: the one-kernel norms and rotary embedding keep a model's outputs; restore() undoes them; unknown
norm classes stay."""

import torch
from torch import nn

from memtool.models.fast_ops import FastRMSNorm, use_fast_ops
from memtool.models.tiny import tiny_config


def test_fast_ops_keep_the_logits_and_restore():
    from transformers import LlamaForCausalLM
    from transformers.models.llama import modeling_llama

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config("llama")).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    original = modeling_llama.apply_rotary_pos_emb
    calls = []
    with torch.no_grad():
        want = model(ids).logits
        ops = use_fast_ops(model)
        fast = modeling_llama.apply_rotary_pos_emb
        modeling_llama.apply_rotary_pos_emb = lambda *a, **k: calls.append(1) or fast(*a, **k)
        got = model(ids).logits
        modeling_llama.apply_rotary_pos_emb = fast
    assert len(ops.norms) == 2 * model.config.num_hidden_layers + 1  # two a layer and the final norm
    assert len(ops.rotary) == 1 and fast.original is original and len(calls) == model.config.num_hidden_layers
    assert sum(isinstance(m, FastRMSNorm) for m in model.modules()) == len(ops.norms)
    assert ops.norms[0][2].weight is getattr(ops.norms[0][0], ops.norms[0][1]).weight  # the same Parameter
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    ops.restore()
    assert not any(isinstance(m, FastRMSNorm) for m in model.modules())
    assert modeling_llama.apply_rotary_pos_emb is original


def test_other_norm_classes_are_left_alone():
    class GemmaRMSNorm(nn.Module):  # (1 + weight): not the formula FastRMSNorm computes
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(8))
            self.eps = 1e-6

    ops = use_fast_ops(nn.Sequential(GemmaRMSNorm(), nn.LayerNorm(8)))
    assert ops.norms == [] and ops.rotary == []
