import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from memtool.cli.app import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, list(args))


def _one_line_error(res, code):
    assert res.exit_code == code, (res.exit_code, res.output)
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    return err[0]


def test_eval_tiny_json(tiny_llama_dir):
    res = _invoke("eval", str(tiny_llama_dir), "--compare", str(tiny_llama_dir), "--seq-len", "64",
                  "--windows", "3", "--json", "--quiet")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    row = out["rows"][0]
    assert out["protocol"]["seq_len"] == 64 and out["protocol"]["windows"] == 3
    assert out["protocol"]["tokens_scored"] == 3 * 63
    assert row["perplexity"] > 1 and row["kl_mean"] == 0.0 and row["top1_agreement"] == 1.0


def test_eval_markdown(tiny_llama_dir):
    res = _invoke("eval", str(tiny_llama_dir), "--seq-len", "32", "--windows", "2", "--quiet")
    assert res.exit_code == 0 and "| model | perplexity |" in res.stdout


@pytest.mark.parametrize("case", ["missing", "noconfig", "truncated", "hub_offline", "pickle", "data_missing",
                                  "bad_stride"])
def test_bad_inputs_exit_2_nothing_written(case, tmp_path, tiny_llama_dir, monkeypatch):
    before = set(tmp_path.rglob("*"))
    args = None
    if case == "missing":
        args = [str(tmp_path / "nope")]
    elif case == "noconfig":
        d = tmp_path / "noconfig"
        d.mkdir()
        args = [str(d)]
    elif case == "truncated":
        d = tmp_path / "trunc"
        shutil.copytree(tiny_llama_dir, d)
        f = d / "model.safetensors"
        f.write_bytes(f.read_bytes()[:1000])
        args = [str(d)]
    elif case == "hub_offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
        import huggingface_hub.constants as c

        monkeypatch.setattr(c, "HF_HUB_CACHE", str(tmp_path / "hubcache"))
        args = ["nobody/not-cached-model"]
    elif case == "pickle":
        d = tmp_path / "pk"
        d.mkdir()
        shutil.copy(tiny_llama_dir / "config.json", d / "config.json")
        torch.save({"x": torch.ones(1)}, d / "pytorch_model.bin")
        args = [str(d)]
    elif case == "data_missing":
        args = [str(tiny_llama_dir), "--data", str(tmp_path / "missing.txt")]
    elif case == "bad_stride":
        args = [str(tiny_llama_dir), "--seq-len", "32", "--stride", "64"]
    before = set(tmp_path.rglob("*"))
    res = _invoke("eval", *args)
    line = _one_line_error(res, 2)
    assert set(tmp_path.rglob("*")) == before, "nothing may be written"
    if case == "pickle":
        assert "--allow-pickle" in line


def test_debug_shows_traceback(tmp_path):
    res = _invoke("eval", str(tmp_path / "nope"), "--debug")
    assert res.exit_code == 2 and "Traceback" in res.stderr


def test_help_lists_exit_codes():
    res = _invoke("--help")
    assert res.exit_code == 0 and "2 usage/bad input" in res.stdout
