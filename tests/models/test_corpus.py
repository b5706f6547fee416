import pytest
import torch

from memtool.errors import UsageError
from memtool.models.corpus import builtin_text, calibration_tokens, load_text, token_windows
from memtool.models.tiny import byte_tokenizer


def test_builtin_corpus_deterministic_and_disjoint():
    ev, cal = builtin_text("eval"), builtin_text("calib")
    assert len(ev) > 100_000 and len(cal) > 100_000
    builtin_text.cache_clear()
    assert builtin_text("eval") == ev
    assert ev[:2000] not in cal


def test_windows_protocol():
    tok = byte_tokenizer()
    text = "".join(chr(97 + i % 26) for i in range(1000))
    win, score_from = token_windows(tok, text, 100, None, None)
    assert win.shape == (10, 100) and score_from == 0
    assert torch.equal(win.flatten(), torch.tensor(tok(text, add_special_tokens=False)["input_ids"]))
    win, score_from = token_windows(tok, text, 100, 3, 50)
    assert win.shape == (3, 100) and score_from == 50
    assert torch.equal(win[1, :50], win[0, 50:])
    with pytest.raises(UsageError):
        token_windows(tok, "short", 100)


def test_calibration_tokens_seeded():
    tok = byte_tokenizer()
    a = calibration_tokens(tok, 4, 64, seed=1)
    assert a.shape == (4, 64) and torch.equal(a, calibration_tokens(tok, 4, 64, seed=1))


def test_data_file_errors(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_text(str(tmp_path / "nope.txt"))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UsageError, match="empty"):
        load_text(str(tmp_path / "empty.txt"))
