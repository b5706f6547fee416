"""The quantize pipeline on a tiny Llama (hidden 64, intermediate 160 -> ragged groups for g=64/128)."""

import json

import pytest
import torch

from memtool.compress import formats
from memtool.compress.artifact import read_artifact
from memtool.compress.modules import LutLinear, load_artifact_model
from memtool.compress.quantize import QuantizeSpec, matches, parse_override, quantize_model
from memtool.errors import UsageError
from memtool.progress import PlainProgress


def dequantized_reference(src_dir, art_dir):
    """The source architecture with every tensor replaced by the artifact's stored / dequantized value (fp32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(src_dir), dtype=torch.float32).eval()
    art = read_artifact(art_dir)
    sd = model.state_dict()
    with torch.no_grad():
        for p in art.iter_packed():
            fmt = formats.get(p.format)
            if not fmt.packed:
                sd[p.module].copy_(fmt.dequantize(p, torch.float32))
                continue
            w = fmt.dequantize(p, torch.float32)  # [out, in]
            conv = type(model.get_submodule(p.module)).__name__ == "Conv1D"  # GPT-2 stores [in, out]
            sd[p.module + ".weight"].copy_(w.T if conv else w)
    return model


def _ids(seed=0):
    return torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method,calib,g", [
    ("uniform", "rtn", 32), ("bcq", "rtn", 64), ("nf", "rtn", 128),
    ("uniform", "gptq", 64), ("bcq", "gptq", -1), ("nf", "gptq", 32),
])
def test_quantize_load_matches_dequantized_model(tiny_llama_dir, tmp_path, method, calib, g):
    out = tmp_path / "art"
    spec = QuantizeSpec(bits=3, group_size=g, method=method, calib_method=calib, n_calib=4, calib_len=32)
    res = quantize_model(str(tiny_llama_dir), out, spec, command=["test"])
    tot = res["totals"]
    assert tot["quantized_layers"] == 14 and tot["compression_ratio"] > 1
    man = json.loads((out / "manifest.json").read_text())
    assert man["source"]["sha256"] and man["seed"] == 0 and man["command"] == ["test"]
    lin = [r for r in man["layers"] if r["format"] == "lut"]
    assert all(0 < r["rel_error"] < 0.6 and r["method"] == method for r in lin)
    if calib == "gptq":
        assert all(0 <= r["output_rel_error"] < 0.6 for r in lin)
    # lm_head and embeddings stay dense (16-bit)
    art = read_artifact(out)
    assert "lm_head" not in art.packed_modules()
    assert art.qconfig["modules"]["model.layers.0.mlp.down_proj"]["shape"] == [64, 160]
    model = load_artifact_model(out)
    assert isinstance(model.model.layers[1].mlp.down_proj, LutLinear)
    ref = dequantized_reference(tiny_llama_dir, out)
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()).logits, ref(_ids()).logits, rtol=1e-5, atol=1e-5)


def test_gptq_beats_rtn_on_output_error(tiny_llama_dir, tmp_path):
    errs = {}
    for calib in ("rtn", "gptq"):
        spec = QuantizeSpec(bits=3, group_size=32, calib_method=calib, n_calib=8, calib_len=64)
        quantize_model(str(tiny_llama_dir), tmp_path / calib, spec)
        man = json.loads((tmp_path / calib / "manifest.json").read_text())
        errs[calib] = {r["name"]: r["rel_error"] for r in man["layers"] if r["format"] == "lut"}
    # GPTQ trades weight error for output error; it should not be wildly worse in weight space either
    assert all(errs["gptq"][k] < 3 * errs["rtn"][k] for k in errs["rtn"])


def test_skip_override_and_progress_lines(tiny_llama_dir, tmp_path):
    import io

    buf = io.StringIO()
    spec = QuantizeSpec(bits=4, group_size=32, skip=["*.k_proj"],
                        overrides=[parse_override("down_proj=2:64:nf"), parse_override("lm_head=8")])
    quantize_model(str(tiny_llama_dir), tmp_path / "a", spec, progress=PlainProgress(buf))
    mods = read_artifact(tmp_path / "a").packed_modules()
    assert not any(k.endswith("k_proj") for k in mods)
    d = mods["model.layers.0.mlp.down_proj"]
    assert (d["bits"], d["group_size"], d["method"]) == (2, 64, "nf")
    assert mods["lm_head"]["bits"] == 8 and mods["model.layers.0.self_attn.q_proj"]["bits"] == 4
    lines = buf.getvalue().splitlines()
    assert any("model.layers.0.mlp.down_proj" in ln and "MiB ->" in ln for ln in lines)


def test_sharded_output(tiny_llama_dir, tmp_path):
    quantize_model(str(tiny_llama_dir), tmp_path / "a", QuantizeSpec(bits=4, group_size=32, max_shard_bytes=20000))
    assert (tmp_path / "a" / "model.safetensors.index.json").exists()
    assert len(read_artifact(tmp_path / "a").shard_files()) > 2
    m = load_artifact_model(tmp_path / "a")
    with torch.no_grad():
        assert torch.isfinite(m(_ids()).logits).all()


@pytest.mark.parametrize("kw,match", [
    (dict(bits=7), "bits must be one of"),
    (dict(group_size=0), "group size must be one of"),
    (dict(method="zzz"), "unknown method"),
    (dict(calib_method="awq"), "unknown calibration method"),
    (dict(calib_method="gptq", calib="/no/such/file.txt"), "calibration file not found"),
    (dict(device="tpu"), "unknown device"),
])
def test_bad_arguments_write_nothing(tiny_llama_dir, tmp_path, kw, match):
    with pytest.raises(UsageError, match=match):
        quantize_model(str(tiny_llama_dir), tmp_path / "out", QuantizeSpec(**kw))
    assert list(tmp_path.iterdir()) == []


def test_refuses_to_overwrite_its_input(tmp_path):
    from memtool.models.tiny import save_tiny_model

    src = save_tiny_model(tmp_path / "m", "llama")
    with pytest.raises(UsageError, match="is the input model's directory"):
        quantize_model(str(src), src, QuantizeSpec(), overwrite=True)
    assert (src / "model.safetensors").exists()


@pytest.mark.parametrize("text,match", [
    ("down_proj", "expected PATTERN="), ("x=7", "bits must be"), ("x=4:48", "group size"), ("x=4:32:foo", "method"),
    ("x=a", "integers"),
])
def test_bad_overrides(text, match):
    with pytest.raises(UsageError, match=match):
        parse_override(text)


def test_matches():
    assert matches("model.layers.0.mlp.down_proj", "down_proj")
    assert matches("model.layers.0.mlp.down_proj", "*.mlp.*")
    assert not matches("model.layers.0.mlp.down_proj", "*.k_proj")


def test_tied_embeddings(tmp_path):
    from transformers import AutoModelForCausalLM

    from memtool.models.tiny import save_tiny_model

    src = save_tiny_model(tmp_path / "tied", "llama", tie_word_embeddings=True)
    quantize_model(str(src), tmp_path / "a", QuantizeSpec(bits=4, group_size=32))
    own = load_artifact_model(tmp_path / "a")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "a")).eval()
    for m in (own, hf):
        assert m.lm_head.weight.data_ptr() == m.model.embed_tokens.weight.data_ptr()
    ref = dequantized_reference(src, tmp_path / "a")
    with torch.no_grad():
        torch.testing.assert_close(own(_ids()).logits, ref(_ids()).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hf(_ids()).logits, ref(_ids()).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,calib", [("qwen2", "rtn"), ("opt", "gptq"), ("gpt2", "rtn"), ("gpt2", "gptq")])
def test_other_architectures(tmp_path, arch, calib):
    """Biased projections (qwen2, opt) and GPT-2's transposed Conv1D weights."""
    from transformers import AutoModelForCausalLM

    from memtool.models.tiny import save_tiny_model

    src = save_tiny_model(tmp_path / arch, arch)
    res = quantize_model(str(src), tmp_path / "a", QuantizeSpec(bits=4, group_size=32, calib_method=calib,
                                                               n_calib=4, calib_len=32))
    assert res["totals"]["quantized_layers"] >= 8
    own = load_artifact_model(tmp_path / "a")
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "a")).eval()
    ref = dequantized_reference(src, tmp_path / "a")
    with torch.no_grad():
        r = ref(_ids()).logits
        torch.testing.assert_close(own(_ids()).logits, r, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(hf(_ids()).logits, r, rtol=1e-5, atol=1e-5)


def test_short_calibration_text_writes_nothing(tiny_llama_dir, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("too short")
    spec = QuantizeSpec(calib_method="gptq", calib=str(short), calib_len=64, n_calib=2)
    with pytest.raises(UsageError, match="calibration text has"):
        quantize_model(str(tiny_llama_dir), tmp_path / "out", spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["short.txt"]
