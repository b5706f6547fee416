import json

from typer.testing import CliRunner

from memtool.cli.app import app


def test_bench_json_quick(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMTOOL_CACHE", str(tmp_path))
    r = CliRunner().invoke(app, ["bench", "--json", "--quick", "--quiet", "--threads", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["device"] == "cpu" and out["rows"]
    cases = {row["case"] for row in out["rows"]}
    assert "linear-fp16" in cases
    for row in out["rows"]:
        assert row["time_us"] > 0 and row["device"] == "cpu"


def test_bench_csv_and_markdown_and_plot(tmp_path):
    args = ["bench", "--quick", "--quiet", "--threads", "1", "--case", "linear-fp16", "--m", "1", "--shapes", "128x256"]
    r = CliRunner().invoke(app, args + ["--csv"])
    assert r.exit_code == 0, r.output
    lines = r.stdout.strip().splitlines()
    assert lines[0].startswith("case,device,shape,m,dtype,time_us") and len(lines) == 2
    r = CliRunner().invoke(app, args + ["--plot", str(tmp_path / "b.png")])
    assert r.exit_code == 0, r.output
    assert "| linear-fp16 | 128x256 | 1 | fp16 |" in r.stdout
    assert (tmp_path / "b.png").exists()


def test_bench_list():
    r = CliRunner().invoke(app, ["bench", "--list", "--json"])
    assert r.exit_code == 0
    names = [row["case"] for row in json.loads(r.stdout)["rows"]]
    assert "linear-fp16" in names and "int4-tinygemm" in names


def test_bench_bad_args_exit_2():
    for args in (["--case", "nope"], ["--m", "x"], ["--shapes", "12"], ["--json", "--csv"], ["--device", "cuda"]):
        r = CliRunner().invoke(app, ["bench", "--quick", "--quiet"] + args)
        assert r.exit_code == 2, (args, r.output)
        assert r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
