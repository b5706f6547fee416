"""Fused q/k/v and gate/up LUT linears: the same logits as the separate layers, nothing held between calls, and
groups that cannot share one weight left alone."""

import copy

import pytest
import torch
from torch import nn

from memtool.compress.fuse import FusedLutLinear, LutSlice, fuse_lut_projections
from memtool.compress.modules import LutLinear
from memtool.kernels.lut_types import LutWeight
from memtool.models.tiny import tiny_model


def _random_lut(lin: nn.Linear, kind: str, bits: int, g: int, seed: int, table=None) -> LutLinear:
    n, k = lin.out_features, lin.in_features
    gen = torch.Generator().manual_seed(seed)
    G = -(-k // g)
    codes = torch.randint(0, 2**bits, (n, k), generator=gen)
    if kind == "affine":
        kw = dict(scale=torch.rand(n, G, generator=gen) * 0.02 + 0.001, bias=torch.randn(n, G, generator=gen) * 0.01)
    elif kind == "bcq":
        kw = dict(alpha=torch.rand(n, G, bits, generator=gen) * 0.02, offset=torch.randn(n, G, generator=gen) * 0.01)
    else:
        kw = dict(scale=torch.rand(n, G, generator=gen) * 0.02 + 0.001,
                  table=table if table is not None else torch.randn(n, G, 2**bits, generator=gen))
    bias = None if lin.bias is None else torch.randn(n, generator=gen) * 0.01
    return LutLinear.from_lut_weight(LutWeight.from_codes(codes, kind, bits, g, **kw), bias)


def _lut_model(kind="affine", bits=4, table=None, odd=None):
    model = tiny_model("llama").eval()
    seed = 0
    for mod in list(model.modules()):
        for child, lin in list(mod.named_children()):
            if isinstance(lin, nn.Linear) and child != "lm_head":
                seed += 1
                b = 3 if odd is not None and child == odd else bits
                mod._modules[child] = _random_lut(lin, kind, b, 32, seed, table)
    return model


@pytest.mark.parametrize("kind", ["affine", "bcq", "table", "global-table"])
def test_fused_model_matches_separate_layers(kind):
    table = torch.randn(16).sort().values if kind == "global-table" else None
    model = _lut_model("table" if kind == "global-table" else kind, table=table)
    fused = copy.deepcopy(model)
    added = fuse_lut_projections(fused)
    layers = len(model.model.layers)
    assert len(added) == 2 * layers  # q/k/v and gate/up in every layer
    attn = fused.model.layers[0].self_attn
    assert isinstance(attn.q_proj, LutSlice) and isinstance(attn.q_proj_fused, FusedLutLinear)
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.no_grad():
        ref = model(ids).logits
        out = fused(ids).logits
        again = fused(ids[:, :3]).logits  # a second call with other inputs recomputes
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, ref[:, :3], rtol=1e-5, atol=1e-5)
    held = [m for m in fused.modules() if isinstance(m, FusedLutLinear) and m._y is not None]
    assert not held  # every member took its part: no activations kept between calls


def test_fused_part_recomputes_after_in_place_change():
    model = _lut_model()
    attn = model.model.layers[0].self_attn
    q, k = attn.q_proj, attn.k_proj
    fuse_lut_projections(model)
    x = torch.randn(1, 3, q.in_features)
    y_q = attn.q_proj(x)
    x.mul_(2)  # the pending product no longer belongs to x
    torch.testing.assert_close(attn.k_proj(x), k(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y_q, q(x / 2), rtol=1e-5, atol=1e-6)


def test_groups_that_differ_are_left_alone():
    model = _lut_model(odd="k_proj")  # k_proj 3-bit, q/v 4-bit: no shared weight
    added = fuse_lut_projections(model)
    layers = len(model.model.layers)
    assert len(added) == layers and all(a.endswith("gate_proj_fused") for a in added)
    assert isinstance(model.model.layers[0].self_attn.q_proj, LutLinear)
    plain = tiny_model("llama")
    assert fuse_lut_projections(plain) == []  # nn.Linear layers: nothing to fuse
