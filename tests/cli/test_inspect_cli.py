"""`memtool inspect` on an artifact and on a plain checkpoint."""

import json

from typer.testing import CliRunner

from memtool.cli.app import app
from memtool.compress.quantize import QuantizeSpec, quantize_model

runner = CliRunner()


def test_inspect_artifact_and_plain(tiny_llama_dir, tmp_path):
    out = tmp_path / "a"
    quantize_model(str(tiny_llama_dir), out, QuantizeSpec(bits=3, group_size=32))
    r = runner.invoke(app, ["inspect", str(out), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["artifact"] and d["quantized_layers"] == 14 and d["format"] == "lut" and d["bits"] == 3
    assert 3.0 < d["avg_bits_per_quantized_weight"] < 5 and d["compression_ratio"] > 1.5
    rows = {x["layer"]: x for x in d["rows"]}
    assert rows["model.layers.0.mlp.down_proj"]["format"] == "lut/uniform 3b g32"
    assert rows["model.layers.0.mlp.down_proj"]["shape"] == "64x160"
    assert rows["model.embed_tokens.weight"]["format"].startswith("dense")
    r = runner.invoke(app, ["inspect", str(out)])
    assert r.exit_code == 0 and "| layer |" in r.stdout and "compression_ratio" in r.stdout
    r = runner.invoke(app, ["inspect", str(tiny_llama_dir), "--json"])
    d = json.loads(r.stdout)
    assert r.exit_code == 0 and not d["artifact"] and d["compression_ratio"] == 1 and d["quantized_layers"] == 0


def test_inspect_errors(tmp_path):
    r = runner.invoke(app, ["inspect", str(tmp_path / "nope")])
    assert r.exit_code == 2 and "no such directory" in r.stderr
    r = runner.invoke(app, ["inspect", str(tmp_path)])
    assert r.exit_code == 2 and "no config.json" in r.stderr
