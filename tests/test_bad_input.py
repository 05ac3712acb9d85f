"""Every ordinary bad input is one ``error:`` line and exit 2, before anything is written.

One row per bad input: the command line, the exit code, a fragment of the message (it names the
flag or file the user typed) and a path that must be left as it was (absent stays absent, an
existing file keeps its bytes, a folder its files and their bytes). The next bad input found is one
more :class:`Row` in :data:`ROWS`.

``argv``, ``message`` and ``untouched`` are templates filled from :class:`Paths`: ``{tmp}`` (a fresh
folder per row), ``{model}``, ``{task}``, ``{general}`` (the tiny session fixtures of conftest.py:
never write there; rows that could damage a model use ``copy_model``, which puts a private copy at
``{tmp}/model``) and ``{run}`` (a private copy of the finished tiny run at ``{tmp}/run``; only rows
that name it pay for the copy). ``setup(paths)`` writes the row's bad files; ``patch(monkeypatch)``
simulates what a test cannot cause for real (a full disk).
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sieve.cli import app


@dataclass(frozen=True)
class Paths:
    tmp: Path
    model: Path
    task: Path
    general: Path
    run: Path | None


@dataclass(frozen=True)
class Row:
    id: str
    argv: tuple[str, ...]
    code: int
    message: str
    untouched: str | None = None
    setup: Callable[[Paths], None] | None = None
    patch: Callable[[pytest.MonkeyPatch], None] | None = None


# ------------------------------------------------------------------------------------------ helpers
COMMON = ("--model", "{model}", "--task", "{task}", "--general", "{general}", "--device", "cpu")


def search(*extra: str) -> tuple[str, ...]:
    return ("search", "--budget", "0.5", *COMMON, "--run-dir", "{tmp}/run", *extra)


def prune_with_general(name: str) -> tuple[str, ...]:
    return ("prune", "--model", "{model}", "--general", f"{{tmp}}/{name}", "--method", "wanda", "--device", "cpu",
            "--out", "{tmp}/out")


def write(name: str, content: str | bytes) -> Callable[[Paths], None]:
    """Setup: write ``content`` to ``{tmp}/name``."""

    def setup(paths: Paths) -> None:
        path = paths.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return setup


def copy_model(into: str = "model", link: str | None = None) -> Callable[[Paths], None]:
    """Setup: a private copy of the tiny model at ``{tmp}/into`` (and a symlink ``{tmp}/link`` to it)."""

    def setup(paths: Paths) -> None:
        shutil.copytree(paths.model, paths.tmp / into)
        if link is not None:
            (paths.tmp / link).symlink_to(paths.tmp / into, target_is_directory=True)

    return setup


def edit_history(drop: str, line: int) -> Callable[[Paths], None]:
    """Setup: remove field ``drop`` from line ``line`` (1-based) of the run's history.jsonl."""

    def setup(paths: Paths) -> None:
        path = paths.run / "history.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        del rows[line - 1][drop]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    return setup


def disk_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every atomic write fails as on a full disk, after creating its temporary file."""
    import sieve.io

    real = sieve.io.atomic_write

    def no_space(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(sieve.io, "atomic_write", lambda path, _: real(path, no_space))


def lost_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """An OS error no user causes (a file of sieve's own vanishing): still a bug, exit 1 and a log."""
    import sieve.io

    def vanished(path, _):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(path))

    monkeypatch.setattr(sieve.io, "atomic_write", vanished)


def lock_links_to(victim: str) -> Callable[[Paths], None]:
    """Setup: the run's ``.lock`` is a symbolic link to ``{tmp}/victim`` (a file sieve must never empty)."""

    def setup(paths: Paths) -> None:
        (paths.tmp / victim).write_text("precious\n")
        (paths.run / ".lock").unlink(missing_ok=True)
        (paths.run / ".lock").symlink_to(paths.tmp / victim)

    return setup


def damage_history(line: int) -> Callable[[Paths], None]:
    """Setup: line ``line`` (1-based, not the last) of the run's history.jsonl is not JSON."""

    def setup(paths: Paths) -> None:
        path = paths.run / "history.jsonl"
        lines = path.read_text().splitlines()
        lines[line - 1] = lines[line - 1][: len(lines[line - 1]) // 2]
        path.write_text("\n".join(lines) + "\n")

    return setup


def read_only_fs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file system reports itself mounted read-only (what ``statvfs`` says of a ro mount; root
    writes through mode bits, so a chmod would not do)."""
    import os

    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((*real(p)[:8], os.ST_RDONLY, real(p)[9])))


OVERWRITES_INPUT = "which this command reads; --force replaces a previous output, never an input"

# --------------------------------------------------------------------------------------------- rows
ROWS: list[Row] = [
    # ---- flags and config values out of range
    Row("negative seed", search("--seed", "-5"), 2, "--seed: Input should be greater than or equal to 0 (got -5)",
        "{tmp}/run"),
    Row("sparsity outside [0, 1)", ("prune", *COMMON, "--sparsity", "1.5", "--out", "{tmp}/out"), 2,
        "--sparsity: Input should be less than 1 (got 1.5)", "{tmp}/out"),
    Row("pattern that does not divide", ("prune", *COMMON, "--method", "magnitude", "--pattern", "3:7", "--out",
                                         "{tmp}/out"), 2, "does not divide", "{tmp}/out"),
    Row("missing model", ("prune", "--model", "{tmp}/missing", "--out", "{tmp}/out"), 2,
        "model path {tmp}/missing does not exist", "{tmp}/out"),
    Row("unknown config key", ("search", *COMMON, "--config", "{tmp}/c.yaml", "--run-dir", "{tmp}/run"), 2,
        "bugdet", "{tmp}/run", setup=write("c.yaml", "budget: 0.5\nbugdet: 0.4\n")),
    # ---- general corpus files
    Row("binary --general", prune_with_general("g.txt"), 2, "--general {tmp}/g.txt is not UTF-8 text", "{tmp}/out",
        setup=write("g.txt", bytes(range(256)) * 8)),
    Row("--general with NUL bytes", prune_with_general("g.txt"), 2, "--general {tmp}/g.txt is a binary file",
        "{tmp}/out", setup=write("g.txt", b"text\x00\x01\x02 more\n\nand more")),
    Row(".json --general a list of numbers", prune_with_general("g.json"), 2,
        "--general {tmp}/g.json: item 0 is neither a string nor an object with a 'text' string", "{tmp}/out",
        setup=write("g.json", "[1, 2, 3]")),
    Row(".json --general a single string", prune_with_general("g.json"), 2,
        "--general {tmp}/g.json: expected a JSON list of texts, got a str", "{tmp}/out",
        setup=write("g.json", json.dumps("one long text"))),
    Row(".jsonl --general text not a string", prune_with_general("g.jsonl"), 2,
        "--general {tmp}/g.jsonl line 2: expected a JSON object whose 'text' is a string", "{tmp}/out",
        setup=write("g.jsonl", '{"text": "fine"}\n{"text": 3}\n')),
    Row(".jsonl --general line not JSON", prune_with_general("g.jsonl"), 2, "--general {tmp}/g.jsonl line 1 is not JSON",
        "{tmp}/out", setup=write("g.jsonl", "text, not JSON\n")),
    # ---- outputs: checked before any work, never over an input
    Row("eval --json an existing folder", ("eval", "{model}", "--task", "{task}", "--general", "{general}", "--device",
                                           "cpu", "--json", "{tmp}/results"), 2,
        "--json {tmp}/results is a folder", "{tmp}/results", setup=write("results/keep.txt", "x")),
    Row("eval --json the allocation", ("eval", "{run}/best_allocation.json", "--device", "cpu", "--json",
                                       "{run}/best_allocation.json"), 2,
        f"--json {{run}}/best_allocation.json is the allocation ({{run}}/best_allocation.json), {OVERWRITES_INPUT}",
        "{run}"),
    Row("eval --json the --general file", ("eval", "{model}", "--task", "{task}", "--general", "{tmp}/g.txt",
                                           "--device", "cpu", "--json", "{tmp}/g.txt"), 2,
        "--json {tmp}/g.txt is the general corpus", "{tmp}/g.txt", setup=write("g.txt", "some text\n\nmore text")),
    Row("export --out the folder holding the run", ("export", "{run}", "--to", "hf", "--out", "{tmp}", "--force"), 2,
        f"--out {{tmp}} contains the run ({{run}}), {OVERWRITES_INPUT}", "{tmp}"),
    Row("export --out inside the run", ("export", "{run}", "--to", "csv", "--out", "{run}/table.csv", "--force"), 2,
        "--out {run}/table.csv lies inside the run ({run})", "{run}"),
    Row("export --out the allocation file", ("export", "{run}/best_allocation.json", "--to", "csv", "--out",
                                             "{run}/best_allocation.json", "--force"), 2,
        "--out {run}/best_allocation.json is the allocation", "{run}"),
    Row("export --out the model", ("export", "{run}", "--to", "hf", "--model", "{tmp}/model", "--out", "{tmp}/model",
                                   "--force"), 2, "--out {tmp}/model is the model ({tmp}/model)", "{tmp}/model",
        setup=copy_model()),
    Row("export --out a file where a folder goes", ("export", "{run}", "--to", "hf", "--out", "{tmp}/f", "--force"), 2,
        "--out {tmp}/f is a file; this command writes a folder there", "{tmp}/f", setup=write("f", "mine")),
    Row("prune --out the model", ("prune", "--model", "{tmp}/model", "--method", "magnitude", "--device", "cpu",
                                  "--out", "{tmp}/model", "--force"), 2,
        f"--out {{tmp}}/model is the model ({{tmp}}/model), {OVERWRITES_INPUT}", "{tmp}/model", setup=copy_model()),
    Row("prune --out the model's parent", ("prune", "--model", "{tmp}/m/model", "--method", "magnitude", "--device",
                                           "cpu", "--out", "{tmp}/m", "--force"), 2,
        "--out {tmp}/m contains the model ({tmp}/m/model)", "{tmp}/m", setup=copy_model("m/model")),
    Row("prune --out inside the model", ("prune", "--model", "{tmp}/model", "--method", "magnitude", "--device", "cpu",
                                         "--out", "{tmp}/model/pruned", "--force"), 2,
        "--out {tmp}/model/pruned lies inside the model", "{tmp}/model", setup=copy_model()),
    Row("prune --out a symlink to the model", ("prune", "--model", "{tmp}/model", "--method", "magnitude", "--device",
                                               "cpu", "--out", "{tmp}/link", "--force"), 2,
        "--out {tmp}/link is the model ({tmp}/model)", "{tmp}/model", setup=copy_model(link="link")),
    Row("prune --out the general corpus's folder", ("prune", "--model", "{model}", "--general", "{tmp}/data/g.txt",
                                                    "--method", "wanda", "--device", "cpu", "--out", "{tmp}/data",
                                                    "--force"), 2,
        "--out {tmp}/data contains the general corpus ({tmp}/data/g.txt)", "{tmp}/data",
        setup=write("data/g.txt", "some text\n\nmore text")),
    Row("prune --allocation --out the run", ("prune", "--allocation", "{run}", "--device", "cpu", "--out", "{run}",
                                             "--force"), 2, "--out {run} is the run ({run})", "{run}"),
    Row("prune --masks --out the masks", ("prune", "--masks", "{tmp}/m.safetensors", "--model", "{model}", "--device",
                                          "cpu", "--out", "{tmp}/m.safetensors", "--force"), 2,
        "--out {tmp}/m.safetensors is the masks", "{tmp}/m.safetensors", setup=write("m.safetensors", b"masks")),
    Row("prune --masks --out the model", ("prune", "--masks", "{tmp}/m.safetensors", "--model", "{tmp}/model",
                                          "--device", "cpu", "--out", "{tmp}/model", "--force"), 2,
        "--out {tmp}/model is the model", "{tmp}/model", setup=lambda p: (write("m.safetensors", b"m")(p), copy_model()(p))),
    # ---- damaged run files
    Row("report: history line missing a field", ("report", "{run}"), 2,
        "{run}/history.jsonl line 2 lacks the field 'median' (a number expected)", "{run}",
        setup=edit_history("median", 2)),
    # ---- run directories
    Row("--run-dir an existing file", search(), 2, "run directory {tmp}/run is a file, not a folder", "{tmp}/run",
        setup=write("run", "mine")),
    Row("--run-dir inside a file", ("search", "--budget", "0.5", *COMMON, "--run-dir", "{tmp}/f/run"), 2,
        "run directory {tmp}/f/run: {tmp}/f is a file, not a folder", "{tmp}/f", setup=write("f", "mine")),
    Row("--run-dir name too long", ("search", "--budget", "0.5", *COMMON, "--run-dir", "{tmp}/" + "r" * 300), 2,
        "is 300 bytes, longer than the file system allows (255); choose a shorter --run-dir", "{tmp}"),
    Row("--run-dir on a read-only file system", search(), 2, "run directory {tmp}/run cannot be written: {tmp} is on "
        "a read-only file system", "{tmp}/run", patch=read_only_fs),
    Row("--run-dir holding files sieve did not write", search(), 2, "holds files sieve did not write (notes.txt); "
        "choose another --run-dir, or pass --force", "{tmp}/run", setup=write("run/notes.txt", "mine")),
    Row("--run-dir holding a run", ("search", "--budget", "0.5", *COMMON, "--run-dir", "{run}"), 2,
        "{run} holds a run at generation 2; resume with `sieve search --resume {run}`", "{run}"),
    Row("resume with a symlinked .lock", ("search", "--resume", "{run}", "--generations", "3"), 2,
        "{run}/.lock is a symbolic link, not sieve's lock file", "{tmp}/victim.txt", setup=lock_links_to("victim.txt")),
    Row("resume with a damaged history line", ("search", "--resume", "{run}", "--generations", "3"), 2,
        "{run}/history.jsonl line 2 is damaged (not JSON); fix or delete that line", "{run}", setup=damage_history(2)),
    # ---- the machine
    Row("full disk", ("prune", "--model", "{model}", "--method", "magnitude", "--device", "cpu", "--out", "{tmp}/out"),
        2, "error: no space left on device writing {tmp}/out", "{tmp}", patch=disk_full),
    Row("a genuine bug stays exit 1", ("prune", "--model", "{model}", "--method", "magnitude", "--device", "cpu",
                                       "--out", "{tmp}/out"), 1, "error: unexpected FileNotFoundError", "{tmp}",
        patch=lost_file),
]


# --------------------------------------------------------------------------------------------- test
def _state(path: Path) -> object:
    """What "untouched" compares: absent, a file's bytes, or a folder's files and their bytes."""
    if not path.exists():
        return None
    if path.is_file():
        return path.read_bytes()
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input(row: Row, request, tmp_path, monkeypatch, tiny_model_dir, tiny_task, tiny_corpus):
    uses_run = any("{run}" in text for text in (*row.argv, row.message, row.untouched or ""))
    run = request.getfixturevalue("copy_run")() if uses_run else None
    paths = Paths(tmp_path, tiny_model_dir, tiny_task, tiny_corpus, run)
    fill = lambda text: text.format(**vars(paths))  # noqa: E731
    if row.setup is not None:
        row.setup(paths)
    if row.patch is not None:
        row.patch(monkeypatch)
    untouched = Path(fill(row.untouched)) if row.untouched else None
    before = _state(untouched) if untouched else None
    result = CliRunner().invoke(app, [fill(a) for a in row.argv], catch_exceptions=False)
    text = result.output.strip()
    assert result.exit_code == row.code, text
    assert text.startswith("error: ") and len(text.splitlines()) == 1 and "Traceback" not in text, text
    assert fill(row.message) in text, text
    assert ("(a bug; traceback in " in text) == (row.code == 1), text
    if untouched is not None:
        assert _state(untouched) == before, f"{untouched} changed"
