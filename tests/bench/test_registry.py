import sys

import pytest

from memtool.bench import registry
from memtool.bench.registry import BenchContext, bench_case, load_case_modules, select_cases, unregister_case
from memtool.errors import UsageError


def test_baseline_cases_are_registered():
    cases = registry.all_cases()
    assert cases["linear-fp16"].group == "baseline"
    assert cases["int4-tinygemm"].group == "baseline"
    assert [c.name for c in select_cases(groups=["baseline"])][:2] == ["linear-fp16", "int4-tinygemm"]


def test_unknown_case_and_group_are_usage_errors():
    with pytest.raises(UsageError, match="unknown bench case"):
        select_cases(["no-such-case"])
    with pytest.raises(UsageError, match="unknown bench group"):
        select_cases(groups=["no-such-group"])


def test_register_and_duplicate_names():
    @bench_case("test-reg-case", group="testgroup")
    def one(ctx):
        """First line is the description.

        More text."""
        yield from ()

    try:
        c = registry.get_case("test-reg-case")
        assert c.description == "First line is the description." and c.group == "testgroup"
        with pytest.raises(ValueError, match="already registered"):
            @bench_case("test-reg-case")
            def other(ctx):
                yield from ()
    finally:
        unregister_case("test-reg-case")
    assert "test-reg-case" not in registry.all_cases()


def test_missing_module_is_skipped_and_broken_module_is_a_note(tmp_path, monkeypatch):
    (tmp_path / "broken_cases_mod.py").write_text("import a_package_that_does_not_exist_xyz\n")
    (tmp_path / "good_cases_mod.py").write_text(
        "from memtool.bench.registry import bench_case\n"
        "@bench_case('test-from-file', group='file')\n"
        "def f(ctx):\n    yield from ()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = len(registry._LOAD_NOTES)
    try:
        notes = load_case_modules(["memtool.bench.cases_not_written_yet", "broken_cases_mod", "good_cases_mod"])
        new = notes[before:]
        assert len(new) == 1 and "broken_cases_mod" in new[0] and "a_package_that_does_not_exist_xyz" in new[0]
        assert "test-from-file" in registry.all_cases()
    finally:
        unregister_case("test-from-file")
        del registry._LOAD_NOTES[before:]
        sys.modules.pop("good_cases_mod", None)
        sys.modules.pop("broken_cases_mod", None)


def test_context_grid_and_skip():
    ctx = BenchContext(device="cpu", shapes=[(8, 16), (32, 64)], ms=[1, 4])
    assert ctx.grid() == [(8, 16, 1), (8, 16, 4), (32, 64, 1), (32, 64, 4)]
    with pytest.raises(registry.SkipCase):
        ctx.skip("nope")
