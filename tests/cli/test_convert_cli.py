"""`memtool convert --to gptq`."""

import json

from typer.testing import CliRunner

from memtool.cli.app import app
from memtool.compress.quantize import QuantizeSpec, quantize_model

runner = CliRunner()


def test_convert_cli(tiny_llama_dir, tmp_path):
    art = tmp_path / "a"
    quantize_model(str(tiny_llama_dir), art, QuantizeSpec(bits=4, group_size=32))
    r = runner.invoke(app, ["convert", str(art), "--to", "gptq", "-o", str(tmp_path / "g"), "--json", "-q"])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout)["rows"][0]
    assert row["bits"] == 4 and row["layers"] == 14 and row["max_abs_diff_vs_artifact"] < 1e-2
    assert json.loads((tmp_path / "g" / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    r = runner.invoke(app, ["convert", str(art), "--to", "awq", "-o", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown target format" in r.stderr and not (tmp_path / "x").exists()
    r = runner.invoke(app, ["convert", str(tiny_llama_dir), "--to", "gptq", "-o", str(tmp_path / "y")])
    assert r.exit_code == 2 and "not a memtool artifact" in r.stderr and not (tmp_path / "y").exists()
