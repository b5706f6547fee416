"""`import memtool` registers quant_method "memtool": AutoModelForCausalLM.from_pretrained(artifact) round trip."""

import json

import pytest
import torch

import memtool  # noqa: F401  (registers the quantizer)
from memtool.compress.modules import LutLinear, load_artifact_model
from memtool.compress.quantize import QuantizeSpec, quantize_model


def dequantized_reference(src_dir, art_dir):
    """The source architecture with every tensor replaced by the artifact's stored / dequantized value (fp32)."""
    from transformers import AutoModelForCausalLM

    from memtool.compress import formats
    from memtool.compress.artifact import read_artifact

    model = AutoModelForCausalLM.from_pretrained(str(src_dir), dtype=torch.float32).eval()
    sd = model.state_dict()
    with torch.no_grad():
        for p in read_artifact(art_dir).iter_packed():
            fmt = formats.get(p.format)
            w = fmt.dequantize(p, torch.float32)
            if fmt.packed and type(model.get_submodule(p.module)).__name__ == "Conv1D":
                w = w.T
            sd[p.module + ".weight" if fmt.packed else p.module].copy_(w)
    return model


@pytest.fixture(scope="module")
def artifact(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("hf") / "art"
    spec = QuantizeSpec(bits=3, group_size=64, overrides=[])
    from memtool.compress.quantize import parse_override

    spec.overrides = [parse_override("down_proj=4:32:nf"), parse_override("v_proj=2:32:bcq")]
    quantize_model(str(tiny_llama_dir), out, spec)
    return out


def test_registered():
    from transformers.quantizers.auto import AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING

    assert "memtool" in AUTO_QUANTIZATION_CONFIG_MAPPING and "memtool" in AUTO_QUANTIZER_MAPPING


def test_from_pretrained_round_trip(artifact, tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(artifact), dtype=torch.float32).eval()
    lin = model.model.layers[0]
    assert isinstance(lin.self_attn.q_proj, LutLinear) and lin.self_attn.q_proj.kind == "affine"
    assert lin.mlp.down_proj.kind == "table" and lin.self_attn.v_proj.kind == "bcq"
    assert not isinstance(model.lm_head, LutLinear)
    assert lin.self_attn.q_proj.scales.dtype == torch.float16
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(3))
    ref = dequantized_reference(tiny_llama_dir, artifact)
    own = load_artifact_model(artifact)
    with torch.no_grad():
        got = model(ids).logits
        torch.testing.assert_close(got, ref(ids).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got, own(ids).logits, rtol=0, atol=0)


def test_unknown_format_fails_loudly(artifact, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM

    from memtool.errors import UsageError

    bad = tmp_path / "bad"
    shutil.copytree(artifact, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["quantization_config"]["modules"]["model.layers.0.mlp.up_proj"]["format"] = "future-format"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UsageError, match="unknown artifact format 'future-format'"):
        AutoModelForCausalLM.from_pretrained(str(bad))
    with pytest.raises(UsageError, match="unknown artifact format 'future-format'"):
        load_artifact_model(bad)


def test_load_model_routes_artifacts(artifact):
    from memtool.models import load_model, resolve

    ref = resolve(str(artifact))
    assert ref.is_artifact
    m = load_model(ref)
    assert isinstance(m.model.layers[1].mlp.up_proj, LutLinear)
