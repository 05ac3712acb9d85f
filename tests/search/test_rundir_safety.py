"""A run directory never loses or adopts data: what a new search may start in, the lock, the
history, the model's identity, failures, interrupts and durable atomic writes."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from sieve.cli import app
from sieve.config import to_dict
from sieve.errors import SieveError
from sieve.search.checkpoint import Checkpoint
from sieve.search.rundir import RunDir


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _tree(path: Path) -> dict[str, bytes | None]:
    """Every entry under ``path`` (folders as ``None``), the lock file included."""
    return {str(p.relative_to(path)): None if p.is_dir() else p.read_bytes() for p in sorted(path.rglob("*"))}


def _checkpoint(generation: int) -> Checkpoint:
    return Checkpoint(generation=generation, pop_x=[[0, 1]], pop_f=[1.0], rng_state={})


# ------------------------------------------------------------------ where a new run may start


def test_an_unwritable_path_is_one_line_before_anything_exists(search_config, tmp_path, monkeypatch):
    config = search_config()
    (tmp_path / "file").write_text("mine")
    long_name = "r" * 300
    for path, needle in ((tmp_path / "file", "is a file, not a folder"),
                         (tmp_path / "file" / "run", f"{tmp_path / 'file'} is a file, not a folder"),
                         (tmp_path / long_name, "is 300 bytes, longer than the file system allows (255)")):
        with pytest.raises(SieveError, match="choose") as caught:
            RunDir(path).check_creatable(config)
        assert needle in str(caught.value)
    assert sorted(os.listdir(tmp_path)) == ["file"] and (tmp_path / "file").read_text() == "mine"

    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((*real(p)[:8], os.ST_RDONLY, real(p)[9])))
    with pytest.raises(SieveError, match=f"cannot be written: {tmp_path} is on a read-only file system"):
        RunDir(tmp_path / "run").check_creatable(config)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a folder whatever its mode")
def test_a_folder_without_write_permission_is_refused(search_config, tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir(mode=0o500)
    with pytest.raises(SieveError, match=f"cannot be written: {parent} is not writable by this user"):
        RunDir(parent / "run").check_creatable(search_config())


def test_leftovers_of_the_same_search_restart_cleanly_another_is_refused(search_config, tmp_path):
    config, path = search_config(), tmp_path / "run"
    first = RunDir(path)
    with first.lock():
        first.create(config)
    (path / "stats").mkdir()
    (path / "stats" / "general.safetensors").write_bytes(b"stale")
    (path / "history.jsonl").write_text('{"generation": 0}\n{"generat')  # killed before the first checkpoint
    first.mark_failed("RuntimeError: out of memory")
    assert first.failure() == "RuntimeError: out of memory"

    with pytest.raises(SieveError, match=r"holds another search that never finished a generation \(seed: run has 0, now 1\)"):
        RunDir(path).check_creatable(search_config(seed=1))
    again = RunDir(path)
    with again.lock():
        again.create(config)
    assert sorted(os.listdir(path)) == [".lock", "config.yaml"] and again.failure() is None

    _checkpoint(4).save(again.checkpoint_path)
    with pytest.raises(SieveError) as caught:
        RunDir(path).check_creatable(config)
    assert str(caught.value) == (f"{path} holds a run at generation 4; resume with `sieve search --resume {path}`, "
                                 "or choose another --run-dir")


def test_a_folder_with_foreign_files_needs_force_and_keeps_them(search_config, tmp_path):
    config, path = search_config(), tmp_path / "notes"
    path.mkdir()
    (path / "thesis.tex").write_text("two years of work")
    (path / "config.yaml").write_text("budget: 0.5\n")
    with pytest.raises(SieveError, match=r"holds files sieve did not write \(thesis.tex\); choose another --run-dir, "
                                         "or pass --force"):
        RunDir(path).check_creatable(config)
    forced = RunDir(path, force=True)
    with pytest.raises(SieveError, match="holds another search"):  # a config.yaml of other content is not adopted
        forced.check_creatable(config)
    (path / "config.yaml").unlink()
    with forced.lock():
        forced.create(config)
    assert sorted(os.listdir(path)) == [".lock", "config.yaml", "thesis.tex"]
    assert (path / "thesis.tex").read_text() == "two years of work"


def test_a_refused_search_leaves_the_folder_as_it_was(search_config, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "data.csv").write_text("1,2\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(to_dict(search_config())))
    before = _tree(folder)
    result = _invoke("search", "--config", config, "--run-dir", folder)
    assert result.exit_code == 2 and "holds files sieve did not write (data.csv)" in " ".join(result.output.split())
    assert _tree(folder) == before  # no .lock, no config.yaml


# ------------------------------------------------------------------ the lock


def test_a_lock_that_is_not_sieves_is_refused_and_never_truncated(copy_run, tmp_path):
    run = copy_run()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    for make, needle in ((lambda lock: lock.symlink_to(victim), "is a symbolic link, not sieve's lock file"),
                         (lambda lock: os.link(victim, lock), "is not sieve's lock file"),
                         (lambda lock: lock.write_text("not a lock\n"), "is not sieve's lock file")):
        lock = run / ".lock"
        lock.unlink()
        make(lock)
        before = _tree(run)
        result = _invoke("search", "--resume", run, "--generations", 3)
        assert result.exit_code == 2 and needle in " ".join(result.output.split()), result.output
        assert victim.read_text() == "precious\n" and _tree(run) == before


# ------------------------------------------------------------------ history


def test_a_damaged_history_line_is_refused_naming_it_a_torn_last_line_dropped(tmp_path):
    run = RunDir(tmp_path)
    rows = [{"generation": g, "best": 1.0 - g / 10} for g in range(4)]
    lines = [json.dumps(r) for r in rows]
    for damaged, line in ((lines[:1] + ["{torn"] + lines[2:], 2), (["garbage"] + lines[1:], 1),
                          (lines[:2] + ['{"best": 0.5}'] + lines[3:], 3)):
        run.history_path.write_text("\n".join(damaged) + "\n")
        with pytest.raises(SieveError, match=f"{run.history_path} line {line} is damaged"):
            run.history()
        with pytest.raises(SieveError, match=f"line {line} is damaged"):
            run.truncate_history(3)
        assert run.history_path.read_text() == "\n".join(damaged) + "\n"
    run.history_path.write_text("\n".join(lines) + '\n{"generation": 4, "be')  # killed mid-append
    assert run.history() == rows


# ------------------------------------------------------------------ the model's identity


def test_an_edited_model_config_is_refused_on_resume_and_by_allocations(search_config, run_search, tiny_model_dir, tmp_path):
    model = Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))
    run = tmp_path / "run"
    run_search(search_config(model=str(model), generations=1), run, report=False)
    body = json.loads((model / "config.json").read_text())
    assert body["rms_norm_eps"] == 1e-6
    (model / "config.json").write_text(json.dumps({**body, "rms_norm_eps": 1e-5}))
    before = _tree(run)
    result = _invoke("search", "--resume", run, "--generations", 2)
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and ("error: the model changed since the run started (config.json rms_norm_eps: "
                                      "run has 1e-06, now 1e-05); start a new run") in text, text
    assert _tree(run) == before
    result = _invoke("export", run, "--to", "csv", "--out", tmp_path / "t.csv", "--device", "cpu")
    assert result.exit_code == 2 and "with another config or tokenizer than" in " ".join(result.output.split())
    assert not (tmp_path / "t.csv").exists()


def test_the_tokenizer_is_part_of_the_identity(tokenizer):
    import copy

    from sieve.models.identity import tokenizer_digest

    other = copy.deepcopy(tokenizer)
    assert tokenizer_digest(other) == tokenizer_digest(tokenizer)
    other(["a b", "the film was warm"], padding=True)  # momentary padding state: the same tokenizer
    assert tokenizer_digest(other) == tokenizer_digest(tokenizer)
    other.add_tokens(["zzz"])
    assert tokenizer_digest(other) != tokenizer_digest(tokenizer)


# ------------------------------------------------------------------ failures and interrupts


def test_a_failure_marks_the_run_and_the_same_search_restarts_it(search_config, run_search, tmp_path):
    config, path = search_config(generations=1), tmp_path / "run"

    def full_disk(prepared, run):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        run_search(config, path, backend_factory=full_disk, report=False)
    failed = json.loads((path / "failed.json").read_text())
    assert failed["reason"] == "OSError: [Errno 28] No space left on device" and failed["generation"] is None
    shown = _invoke("report", path)
    assert shown.exit_code == 2 and (f"run {path} has no finished generation yet (it failed: OSError: [Errno 28] No "
                                     "space left on device)") in " ".join(shown.output.split())
    outcome = run_search(config, path, report=False)
    assert not (path / "failed.json").exists() and outcome["evaluations"] > 0
    assert [r["generation"] for r in RunDir(path).history()] == [0, 1]


@pytest.mark.parametrize("after_checkpoint", [False, True])
def test_sigterm_takes_the_ctrl_c_path_and_says_what_exists(search_config, tmp_path, monkeypatch, after_checkpoint):
    """SIGTERM (``kill``, a scheduler's stop) exits 130 like Ctrl-C; the message offers ``--resume``
    only when a checkpoint exists, else says the same command starts afresh."""
    import sieve.search.run as run_module

    before = signal.getsignal(signal.SIGTERM)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(to_dict(search_config(generations=5))))
    if after_checkpoint:
        real = Checkpoint.save

        def save_then_terminate(self, path):
            written = real(self, path)
            os.kill(os.getpid(), signal.SIGTERM)
            return written

        monkeypatch.setattr(Checkpoint, "save", save_then_terminate)
    else:
        real = run_module.prepare
        monkeypatch.setattr(run_module, "prepare", lambda *a, **k: (os.kill(os.getpid(), signal.SIGTERM), real(*a, **k))[1])
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["search", "--config", str(config), "--run-dir", str(run)])
    assert result.exit_code == 130, result.output
    text = " ".join(result.output.split())
    if after_checkpoint:
        assert f"the last finished generation is checkpointed. Resume with: sieve search --resume {run}" in text
        assert Checkpoint.load(run / "checkpoint" / "state.json").generation == 0
    else:
        assert "before the first generation finished, so there is nothing to resume; run the same command again" in text
        assert not (run / "checkpoint").exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the CLI put back whatever handler was there


# ------------------------------------------------------------------ atomic writes: durable, umask modes


def test_atomic_writes_fsync_the_folder_after_the_rename(tmp_path, monkeypatch):
    from sieve.io import write_json

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real(fd))[1])
    write_json(tmp_path / "a.json", {"x": 1})
    assert synced == [False, True]  # the file before the rename, its folder after it


def test_outputs_get_the_modes_of_the_umask(tmp_path):
    from sieve.io import replace_path, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        replace_path(tmp_path / "b.csv", lambda p: p.write_text("y"), folder=False)
        replace_path(tmp_path / "model", lambda p: (p / "config.json").write_text("{}"), folder=True)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.rglob("*")}
    assert modes == {"a.txt": 0o644, "b.csv": 0o644, "model": 0o755, "config.json": 0o644}
