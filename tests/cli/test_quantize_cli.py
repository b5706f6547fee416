"""`memtool quantize`: JSON result, exit code 2 and nothing written on bad arguments."""

import json

import pytest
from typer.testing import CliRunner

from memtool.cli.app import app

runner = CliRunner()


def test_quantize_json(tiny_llama_dir, tmp_path):
    out = tmp_path / "q"
    r = runner.invoke(app, ["quantize", str(tiny_llama_dir), "--bits", "4", "--group-size", "32", "-o", str(out),
                            "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["quantized_layers"] == 14 and d["compression_ratio"] > 1 and len(d["rows"]) == 14
    assert (out / "config.json").exists() and (out / "manifest.json").exists()
    man = json.loads((out / "manifest.json").read_text())
    assert man["command"][:2] == ["memtool", "quantize"] or man["command"][0] == "memtool"
    # existing OUT without --overwrite: usage error, untouched
    before = sorted(p.name for p in out.iterdir())
    r = runner.invoke(app, ["quantize", str(tiny_llama_dir), "--bits", "3", "-o", str(out)])
    assert r.exit_code == 2 and "already exists" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == before
    r = runner.invoke(app, ["quantize", str(tiny_llama_dir), "--bits", "3", "--group-size", "32", "-o", str(out),
                            "--overwrite", "--json", "-q"])
    assert r.exit_code == 0 and json.loads(r.stdout)["bits"] == 3


@pytest.mark.parametrize("args,msg", [
    (["--bits", "7"], "bits must be one of"),
    (["--group-size", "0"], "group size must be one of"),
    (["--method", "magic"], "unknown method"),
    (["--override", "down_proj"], "expected PATTERN="),
    (["--calib-method", "gptq", "--calib", "/nonexistent.txt"], "calibration file not found"),
    (["--max-shard-size", "lots"], "bad size"),
])
def test_bad_args_exit_2_nothing_written(tiny_llama_dir, tmp_path, args, msg):
    out = tmp_path / "sub" / "q"
    (tmp_path / "sub").mkdir()
    r = runner.invoke(app, ["quantize", str(tiny_llama_dir), "-o", str(out)] + args)
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert msg in err and len(err.splitlines()) == 1 and err.startswith("error:")
    assert list((tmp_path / "sub").iterdir()) == []


def test_missing_model(tmp_path):
    r = runner.invoke(app, ["quantize", str(tmp_path / "nope"), "-o", str(tmp_path / "q")])
    assert r.exit_code == 2 and not (tmp_path / "q").exists()
