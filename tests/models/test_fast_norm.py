"""Swapping a model's RMSNorms for the one-kernel module keeps its outputs; unknown norm classes stay."""

import torch
from torch import nn

from memtool.models.fast_norm import FastRMSNorm, restore_norms, swap_norms
from memtool.models.tiny import tiny_config


def test_swap_keeps_the_logits_and_restores():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(tiny_config("llama")).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        want = model(ids).logits
        swapped = swap_norms(model)
        got = model(ids).logits
    n_layers = model.config.num_hidden_layers
    assert len(swapped) == 2 * n_layers + 1  # two a layer and the final norm
    assert sum(isinstance(m, FastRMSNorm) for m in model.modules()) == len(swapped)
    assert swapped[0][2].weight is getattr(swapped[0][0], swapped[0][1]).weight  # the same Parameter
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    restore_norms(swapped)
    assert not any(isinstance(m, FastRMSNorm) for m in model.modules())


def test_other_norm_classes_are_left_alone():
    class GemmaRMSNorm(nn.Module):  # (1 + weight): not the formula FastRMSNorm computes
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(8))
            self.eps = 1e-6

    m = nn.Sequential(GemmaRMSNorm(), nn.LayerNorm(8))
    assert swap_norms(m) == []
