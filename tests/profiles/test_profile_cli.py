import json

from typer.testing import CliRunner

from memtool.cli.app import app


def test_profile_json(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMTOOL_CACHE", str(tmp_path))
    r = CliRunner().invoke(app, ["profile", "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["profile"]["device"] == "cpu" and out["profile"]["source"] == "detected"
    assert out["detected"]["cpu"]["cores_logical"] >= 1 and out["measured"] is None
    assert not (tmp_path / "profiles").exists()  # nothing measured, nothing saved


def test_profile_markdown():
    r = CliRunner().invoke(app, ["profile", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "| cpu | model |" in r.stdout


def test_profile_measure_saves_and_is_picked_up(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMTOOL_CACHE", str(tmp_path))
    r = CliRunner().invoke(app, ["profile", "--measure", "--quick", "--json", "--quiet"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["profile"]["source"] == "measured" and out["profile"]["mem_bw_gbs"] > 0
    assert out["saved_to"] and (tmp_path / "profiles").is_dir()
    from memtool.profiles import current_profile

    assert current_profile("cpu").source == "measured"


def test_profile_cuda_without_gpu_exits_2(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMTOOL_CACHE", str(tmp_path))
    r = CliRunner().invoke(app, ["profile", "--measure", "--device", "cuda", "--quiet"])
    assert r.exit_code == 2
    assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1


def test_profile_cuda_without_gpu_exits_2_even_without_measure():
    r = CliRunner().invoke(app, ["profile", "--device", "cuda:0", "--quiet"])
    assert r.exit_code == 2
    r = CliRunner().invoke(app, ["profile", "--device", "tpu", "--quiet"])
    assert r.exit_code == 2
