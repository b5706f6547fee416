"""memtool.offload.engine: resume reproduces the uninterrupted run bit for bit; SIGTERM saves and stops."""

import json
import os
import signal

import pytest
import torch
from safetensors.torch import load_file

from memtool.errors import UsageError
from memtool.models.tiny import save_tiny_model
from memtool.offload.engine import FinetuneOptions, run_finetune
from memtool.offload.zo import ZOConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("eng")
    save_tiny_model(d / "m", "gpt2")  # tied head: the saved checkpoint must round-trip it
    g = torch.Generator().manual_seed(0)
    words = ["alpha", "beta", "gamma", "delta", "eps", "zeta"]
    text = " ".join(words[int(i)] for i in torch.randint(0, 6, (400,), generator=g))
    (d / "t.txt").write_text(text)
    return d


def _opts(d, out, steps, **kw):
    zo = ZOConfig(lr=2e-3, eps=1e-3, seed=7, n_perturb=2, weight_decay=0.01, schedule="linear", warmup_steps=2)
    return FinetuneOptions(model=str(d / "m"), data=str(d / "t.txt"), steps=steps, seq_len=24, batch_size=2, zo=zo,
                           offload="on", device="cpu", output=str(out), **kw)


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def test_resume_after_sigterm_reproduces_the_uninterrupted_run(setup):
    d = setup
    full = run_finetune(_opts(d, d / "full", 6, metrics=str(d / "full.jsonl")))
    assert full["interrupted"] is None and full["end_step"] == 6

    def kill_at_3(rec):
        if rec["step"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    part = run_finetune(_opts(d, d / "part", 6), on_step=kill_at_3)
    assert part["interrupted"] == "SIGTERM" and part["end_step"] == 3
    ck = d / "part" / "checkpoint-3"
    state = json.loads((ck / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["seed"] == 7 and state["pending"] is None
    assert not (d / "part" / "final").exists()
    # the handler was restored: SIGTERM's default disposition is back
    assert signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.default_int_handler) or callable(
        signal.getsignal(signal.SIGTERM))

    rest = run_finetune(_opts(d, d / "part", 6, resume=str(d / "part")))
    assert rest["start_step"] == 3 and rest["end_step"] == 6
    got = [(h["loss"], h["proj_grad"]) for h in part["history"] + rest["history"]]
    want = [(h["loss"], h["proj_grad"]) for h in full["history"]]
    assert got == want
    wf, wp = _weights(d / "full" / "final"), _weights(d / "part" / "final")
    assert wf.keys() == wp.keys() and all(torch.equal(wf[k], wp[k]) for k in wf)
    lines = [json.loads(x) for x in (d / "full.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["event"] == "step"] == list(range(1, 7))


def test_save_every_and_eval(setup):
    d = setup
    s = run_finetune(_opts(d, d / "ev", 4, save_every=2, eval_every=2))
    assert [e["step"] for e in s["eval"]] == [2, 4]
    assert (d / "ev" / "checkpoint-2" / "model.safetensors").is_file()
    assert (d / "ev" / "final" / "trainer_state.json").is_file()
    assert not any(p.name.startswith(".") for p in (d / "ev").iterdir())  # no temp dirs left


def test_lut_quantized_base_is_not_supported(setup, tmp_path):
    d = setup
    q = tmp_path / "q"
    save_tiny_model(q, "llama")
    cfg = json.loads((q / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "memtool", "bits": 4}
    (q / "config.json").write_text(json.dumps(cfg))
    opts = _opts(d, tmp_path / "o", 2)
    opts.model = str(q)
    with pytest.raises(UsageError, match="not supported yet"):
        run_finetune(opts)


def test_sigusr1_saves_and_stops(setup):
    d = setup
    if not hasattr(signal, "SIGUSR1"):
        pytest.skip("no SIGUSR1 on this platform")
    s = run_finetune(_opts(d, d / "usr1", 5), on_step=lambda rec: rec["step"] == 2 and os.kill(os.getpid(),
                                                                                                 signal.SIGUSR1))
    assert s["interrupted"] == "SIGUSR1" and s["end_step"] == 2
    assert (d / "usr1" / "checkpoint-2" / "trainer_state.json").is_file()
