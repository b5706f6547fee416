"""Block-wise calibration statistics and sequential GPTQ over a whole (tiny) model."""

import pytest
import torch

from memtool.compress.calibrate import block_linears, collect_hessians_blockwise, find_blocks
from memtool.compress.gptq import gptq_model
from memtool.compress.lut import LutConfig, quantize_weight
from memtool.models.tiny import tiny_model


def reference_hessians(model, ids):
    """2/n X^T X of every block linear's input from one ordinary forward of the whole model (float64)."""
    acc, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) or type(mod).__name__ == "Conv1D":
            def hook(m, inp, out, name=name):
                x = inp[0].reshape(-1, inp[0].shape[-1]).double()
                h, n = acc.get(name, (0, 0))
                acc[name] = (h + x.T @ x, n + x.shape[0])
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    for h in hooks:
        h.remove()
    return {k: 2 * h / n for k, (h, n) in acc.items()}


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_hessians_match_full_forward(arch):
    model = tiny_model(arch, seed=1)
    ids = torch.randint(0, 256, (5, 24), generator=torch.Generator().manual_seed(0))
    ref = reference_hessians(model, ids)
    prefix, blocks = find_blocks(model)
    seen = 0
    for i, hs in collect_hessians_blockwise(model, ids, "cpu", batch_size=2):
        assert set(hs) == set(block_linears(blocks[i]))
        for name, H in hs.items():
            torch.testing.assert_close(H.double(), ref[f"{prefix}.{i}.{name}"], rtol=1e-4, atol=1e-5)
            seen += 1
    assert seen == sum(len(block_linears(b)) for b in blocks)


def test_sequential_uses_the_modified_block():
    model = tiny_model("llama", seed=2)
    ids = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(1))
    it = collect_hessians_blockwise(model, ids, "cpu", batch_size=3)
    i, h0 = next(it)
    assert i == 0
    with torch.no_grad():  # the caller changes block 0 before resuming
        model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    _, h1 = next(it)
    ref = reference_hessians(model, ids)  # forward with the modified block 0
    torch.testing.assert_close(h1["self_attn.q_proj"].double(), ref["model.layers.1.self_attn.q_proj"],
                               rtol=1e-4, atol=1e-5)


def test_gptq_model_sequential_beats_rtn():
    torch.manual_seed(0)
    ids = torch.randint(0, 256, (8, 32), generator=torch.Generator().manual_seed(2))
    base = tiny_model("llama", seed=3)
    with torch.no_grad():
        ref = base(input_ids=ids).logits
    cfg = LutConfig(3, 32, "uniform")

    rtn = tiny_model("llama", seed=3)
    for b in find_blocks(rtn)[1]:
        for mod in block_linears(b).values():
            mod.weight.data.copy_(quantize_weight(mod.weight.data, cfg).dequantize())
    g = tiny_model("llama", seed=3)
    out = gptq_model(g, ids, cfg, batch_size=4, skip=("*.mlp.down_proj",))
    assert len(out) == 2 * 6 and "model.layers.1.self_attn.q_proj" in out
    assert "model.layers.0.mlp.down_proj" not in out
    torch.testing.assert_close(g.model.layers[0].mlp.down_proj.weight, base.model.layers[0].mlp.down_proj.weight)
    q = out["model.layers.0.self_attn.q_proj"]
    torch.testing.assert_close(q.dequantize(), g.model.layers[0].self_attn.q_proj.weight)
    with torch.no_grad():
        e_rtn = (rtn(input_ids=ids).logits - ref).norm()
        e_g = (g(input_ids=ids).logits - ref).norm()
    assert e_g < e_rtn
