"""`memtool generate` on a tiny model and its packed artifact (CPU)."""

import json

from typer.testing import CliRunner

from memtool.cli.app import app
from memtool.compress.quantize import QuantizeSpec, quantize_model

runner = CliRunner()


def test_generate_plain_and_artifact(tiny_llama_dir, tmp_path):
    art = tmp_path / "a"
    quantize_model(str(tiny_llama_dir), art, QuantizeSpec(bits=8, group_size=32))
    res = {}
    for name, path in (("plain", tiny_llama_dir), ("art", art)):
        r = runner.invoke(app, ["generate", str(path), "--prompt", "Hello", "--max-new-tokens", "6", "--json", "-q"])
        assert r.exit_code == 0, r.output
        d = json.loads(r.stdout)
        assert d["rows"][0]["new_tokens"] >= 1 and d["rows"][0]["tokens_per_s"] > 0 and isinstance(d["text"], str)
        res[name] = d
    assert res["art"]["artifact"] and not res["plain"]["artifact"]
    r = runner.invoke(app, ["generate", str(art), "--prompt", "Hi", "--max-new-tokens", "0"])
    assert r.exit_code == 2 and "at least 1" in r.stderr


def _greedy(path, *flags):
    """``memtool generate PATH --prompt Hello --max-new-tokens 5 FLAG --json`` for each flag: {flag: JSON}."""
    out = {}
    for flag in flags:
        args = ["generate", str(path), "--prompt", "Hello", "--max-new-tokens", "5", flag, "--json", "-q"]
        r = runner.invoke(app, args)
        assert r.exit_code == 0, r.output
        out[flag] = json.loads(r.stdout)
    return out


def test_generate_fused_projections(tiny_llama_dir, tmp_path):
    art = tmp_path / "a4"
    quantize_model(str(tiny_llama_dir), art, QuantizeSpec(bits=4, group_size=32))
    out = _greedy(art, "--fuse", "--no-fuse")
    assert out["--fuse"]["fused_groups"] > 0 and out["--no-fuse"]["fused_groups"] == 0
    assert out["--fuse"]["text"] == out["--no-fuse"]["text"]  # greedy, same weights: the same continuation


def test_generate_fast_ops(tiny_llama_dir):
    """--fast-ops: the RMSNorms and the rotary embedding as one kernel each (off by default on the CPU; the kernels
    run under the test's Triton interpreter); the greedy text is unchanged."""
    out = _greedy(tiny_llama_dir, "--fast-ops", "--no-fast-ops")
    assert out["--fast-ops"]["fast_norms"] > 0 and out["--fast-ops"]["fast_rotary"] == 1
    assert out["--no-fast-ops"]["fast_norms"] == 0 and out["--no-fast-ops"]["fast_rotary"] == 0
    assert out["--fast-ops"]["text"] == out["--no-fast-ops"]["text"]


def test_cuda_graph_needs_cuda(tiny_llama_dir):
    r = runner.invoke(app, ["generate", str(tiny_llama_dir), "--prompt", "Hi", "--max-new-tokens", "3", "--json", "-q"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["decode"] == "transformers"  # the default on the CPU
    r = runner.invoke(app, ["generate", str(tiny_llama_dir), "--prompt", "Hi", "--cuda-graph"])
    assert r.exit_code == 2 and "--cuda-graph needs --device cuda" in r.stderr
