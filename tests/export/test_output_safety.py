"""``--force`` replaces a previous output, never an input (the refusals themselves are rows of
tests/test_bad_input.py; here: the path relation itself, and that ``--force`` still does its job)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sieve.cli import app
from sieve.errors import SieveError
from sieve.io import check_output, input_clash


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _files(folder: Path) -> dict[Path, bytes]:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_input_clash_relations(tmp_path, monkeypatch):
    model = tmp_path / "zoo" / "model"
    model.mkdir(parents=True)
    (tmp_path / "link").symlink_to(model, target_is_directory=True)
    inputs = {"the allocation": None, "the model": model}
    assert input_clash(model, inputs) == ("the model", model, "is")
    assert input_clash(tmp_path / "zoo", inputs) == ("the model", model, "contains")
    assert input_clash(model / "pruned", inputs) == ("the model", model, "lies inside")
    assert input_clash(tmp_path / "link", inputs) == ("the model", model, "is")
    assert input_clash(tmp_path / "link" / "x", inputs) == ("the model", model, "lies inside")
    monkeypatch.chdir(tmp_path / "zoo")
    assert input_clash(Path("model/../model"), inputs) == ("the model", model, "is")
    assert input_clash(Path("."), inputs) == ("the model", model, "contains")
    # a name that merely starts like the input's, a sibling, an unrelated folder: no clash
    for other in (tmp_path / "zoo" / "model2", tmp_path / "zoo" / "other", tmp_path / "elsewhere"):
        assert input_clash(other, inputs) is None


def test_check_output_needs_force_only_for_a_previous_output(tmp_path):
    previous = tmp_path / "out"
    previous.mkdir()
    (previous / "old.txt").write_text("old")
    with pytest.raises(SieveError, match=f"--out {previous} exists; pass --force to replace it"):
        check_output(previous, {}, force=False, writes="folder")
    assert check_output(previous, {}, force=True, writes="folder") == previous
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output(empty, {}, force=False, writes="folder") == empty
    with pytest.raises(SieveError, match="lies inside the model"):
        check_output(previous / "x", {"the model": previous}, force=True, writes="folder")
    with pytest.raises(SieveError, match=f"--json {previous} is a folder"):
        check_output(previous, {}, force=True, writes="file", flag="--json")


def test_prune_force_replaces_its_previous_output_and_leaves_the_model(tiny_model_dir, tmp_path):
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    dense = _files(model)
    out = tmp_path / "pruned"
    base = ("prune", "--model", model, "--method", "magnitude", "--device", "cpu", "--out", out)
    assert _invoke(*base, "--sparsity", "0.25").exit_code == 0
    assert _invoke(*base, "--sparsity", "0.5").exit_code == 2  # exists, no --force
    assert json.loads((out / "allocation.json").read_text())["budget"] == 0.25
    result = _invoke(*base, "--sparsity", "0.5", "--force")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "allocation.json").read_text())["budget"] == 0.5
    assert _files(model) == dense
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "pruned"]  # no temporary folder left


def test_export_force_replaces_a_previous_export_and_leaves_the_run(copy_run, tmp_path):
    run = copy_run()
    before = _files(run)
    out = tmp_path / "exports" / "hf"
    assert _invoke("export", run, "--to", "hf", "--out", out, "--device", "cpu").exit_code == 0
    (out / "stale.txt").write_text("from an older export")
    result = _invoke("export", run, "--to", "hf", "--out", out, "--device", "cpu", "--force")
    assert result.exit_code == 0, result.output
    assert not (out / "stale.txt").exists() and (out / "allocation.json").is_file()
    assert {k: v for k, v in _files(run).items() if k.name != ".lock"} == {k: v for k, v in before.items()
                                                                          if k.name != ".lock"}
