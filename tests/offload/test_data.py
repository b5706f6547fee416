"""memtool.offload.data: text windows, JSONL completion-only labels, errors, deterministic batches."""

import json

import pytest
import torch

from memtool.errors import UsageError
from memtool.models.tiny import byte_tokenizer
from memtool.offload import data as D


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def test_jsonl_loss_on_completion_only(tmp_path, tok):
    p = tmp_path / "d.jsonl"
    recs = [{"prompt": "Q: 2+2?", "completion": " 4"}, {"prompt": "Hi", "completion": " there friend"}]
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    d = D.load_data(str(p), tok, 24)
    assert d.ids.shape == (2, 24)
    for r, ids, lab in zip(recs, d.ids.tolist(), d.labels.tolist()):
        enc = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
        pr = [tok.bos_token_id] + enc(r["prompt"])
        co = enc(r["completion"]) + [tok.eos_token_id]
        assert ids[: len(pr) + len(co)] == pr + co
        assert ids[len(pr) + len(co):] == [tok.pad_token_id] * (24 - len(pr) - len(co))
        assert lab == [-100] * len(pr) + co + [-100] * (24 - len(pr) - len(co))


def test_masked_loss_ignores_prompt(tmp_path, tok):
    """The ZO loss of a prompt/completion batch equals an explicit loop over completion tokens."""
    from memtool.models.tiny import tiny_model
    from memtool.offload.zo import ZOConfig, ZOTrainer

    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"prompt": "abc", "completion": "de"}) + "\n")
    d = D.load_data(str(p), tok, 12)
    m = tiny_model("llama")
    with torch.no_grad():
        logits = m(d.ids).logits[0].double().log_softmax(-1)
    ref = [-logits[t - 1, d.ids[0, t]].item() for t in range(1, 12) if d.labels[0, t] != -100]
    assert len(ref) == 3  # "d", "e", eos
    tr = ZOTrainer(m, ZOConfig(), "cpu", "off")
    assert abs(tr.evaluate([(d.ids, d.labels)]) - sum(ref) / len(ref)) < 1e-5


def test_text_windows(tmp_path, tok):
    p = tmp_path / "t.txt"
    p.write_text("abcdefghij" * 10)
    d = D.load_data(str(p), tok, 16)
    assert d.ids.shape == (101 // 16, 16) and torch.equal(d.ids, d.labels)
    assert d.ids[0].tolist() == tok("abcdefghijabcdef", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("content,msg", [(None, "not found"), ("", "empty"), ("   \n", "empty")])
def test_bad_files(tmp_path, tok, content, msg):
    p = tmp_path / "x.txt"
    if content is not None:
        p.write_text(content)
    with pytest.raises(UsageError, match=msg):
        D.load_data(str(p), tok, 8)


def test_bad_jsonl(tmp_path, tok):
    p = tmp_path / "x.jsonl"
    p.write_text('{"prompt": "a"}\n')
    with pytest.raises(UsageError, match="prompt"):
        D.load_data(str(p), tok, 8)


def test_batches_are_a_function_of_seed_and_step():
    a = [D.batch_indices(10, 4, s, 1).tolist() for s in range(1, 8)]
    b = [D.batch_indices(10, 4, s, 1).tolist() for s in range(1, 8)]
    assert a == b
    flat = sum(a, [])
    assert sorted(flat[:10]) == list(range(10))  # first epoch is a permutation
    assert a != [D.batch_indices(10, 4, s, 2).tolist() for s in range(1, 8)]


def test_dataset_name_without_datasets(tok, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_datasets(name, *a, **k):
        if name == "datasets":
            raise ImportError("no datasets")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_datasets)
    with pytest.raises(UsageError, match="datasets"):
        D.load_data("hf:someone/some_set", tok, 8)
