"""`memtool finetune`: bad inputs exit 2 with one line; a small run works end to end."""

import json

import pytest
from typer.testing import CliRunner

from memtool.cli.app import app
from memtool.models.tiny import save_tiny_model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    save_tiny_model(d / "m", "llama")
    (d / "t.txt").write_text("to be or not to be, that is the question. " * 20)
    (d / "empty.txt").write_text("")
    return d


def _run(*args):
    return CliRunner().invoke(app, ["finetune", *map(str, args)])


def test_small_run_json(files, tmp_path):
    r = _run(files / "m", "--zo", "--data", files / "t.txt", "--steps", 3, "--seq-len", 16, "--batch-size", 2,
             "--lr", 1e-3, "--output", tmp_path / "o", "--json", "--quiet", "--device", "cpu",
             "--trainable", "norm", "--trainable", "lm_head,embed_tokens", "--metrics", tmp_path / "m.jsonl")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["end_step"] == 3 and len(out["rows"]) == 3 and out["blocks_streamed"] == 2
    assert out["trainable_params"] == 5 * 64 + 2 * 260 * 64
    steps = [json.loads(x) for x in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [x["step"] for x in steps] == [1, 2, 3] and all("pcie_gbps" in x for x in steps)
    assert (tmp_path / "o" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("extra,msg", [
    (["--data", "MISSING"], "not found"),
    (["--data", "EMPTY"], "empty"),
    (["--data", "TEXT", "--eps", "0"], "eps"),
    (["--data", "TEXT", "--eps", "-1e-3"], "eps"),
    (["--data", "TEXT", "--offload", "sometimes"], "offload"),
])
def test_bad_inputs_exit_2(files, tmp_path, extra, msg):
    sub = {"MISSING": tmp_path / "nope.txt", "EMPTY": files / "empty.txt", "TEXT": files / "t.txt"}
    args = [sub.get(a, a) for a in extra]
    r = _run(files / "m", "--zo", *args, "--steps", 1, "--output", tmp_path / "o", "--device", "cpu")
    assert r.exit_code == 2, r.output
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and msg in last
    assert not (tmp_path / "o").exists()


def test_without_zo_is_a_usage_error(files, tmp_path):
    r = _run(files / "m", "--data", files / "t.txt", "--output", tmp_path / "o")
    assert r.exit_code == 2 and "first-order" in r.stderr and "--zo" in r.stderr


def test_model_without_block_list(files, tmp_path):
    transformers = pytest.importorskip("transformers")
    from memtool.models.tiny import byte_tokenizer

    cfg = transformers.MambaConfig(vocab_size=260, hidden_size=32, state_size=4, num_hidden_layers=2,
                                   expand=2, conv_kernel=2)
    model = transformers.MambaForCausalLM(cfg)
    model.save_pretrained(tmp_path / "mamba")
    byte_tokenizer().save_pretrained(tmp_path / "mamba")
    r = _run(tmp_path / "mamba", "--zo", "--data", files / "t.txt", "--steps", 1, "--output", tmp_path / "o",
             "--device", "cpu")
    assert r.exit_code == 2, r.output
    assert "no list of transformer blocks" in r.stderr
