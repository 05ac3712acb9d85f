"""A search run directory: one type that owns the layout; everything else asks it.

::

    runs/NAME/
      config.yaml            the validated SearchConfig: space embedded, paths absolute, input digests
      .lock                  the writer's PID and host while a search holds the directory
      stats/<source>.safetensors   calibration statistics (fingerprinted), written once
      checkpoint/state.json  GA population, RNG state, fitness cache, counters (data only)
      history.jsonl          one line per generation
      best_allocation.json   sieve.allocation/v1, rewritten every generation
      results.json           final table: dense / uniform / OWL / best on the test split
      frontier.json          Pareto mode: every probed budget
      failed.json            why the run stopped, when it failed after the directory was made
      eval.json, report/, ray_logs/, logs/

Each generation writes ``best_allocation.json`` and the history line first and the checkpoint
last, all atomically; on resume, history lines past the checkpoint are dropped, so a kill at any
moment loses at most the generation in flight. One process writes at a time (:meth:`RunDir.lock`,
an OS lock released on any exit). A resume is checked *before* anything is written: the config's
identity, the digests of the task and corpus files, then — once the model is loaded — the hash of
its weights, config and tokenizer.

A new run starts only where it loses and adopts nothing (:meth:`RunDir.check_creatable`, cheap, so
it runs before anything slow): an absent or empty folder, or the leftovers of the *same* search that
never finished a generation or was marked failed (removed, then started afresh). A run with a
checkpoint is resumed, never restarted; a folder with files sieve did not write needs ``--force``,
and even then sieve deletes none of them.
"""

from __future__ import annotations

import errno
import fnmatch
import logging
import os
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sieve.config import FLAGS, differences, load_yaml, to_dict, validate
from sieve.data.general import BUILTIN_CORPUS
from sieve.data.task_spec import resolve_task, task_files
from sieve.errors import SieveError
from sieve.io import (
    append_jsonl,
    file_digest,
    fsync_dir,
    read_json,
    read_progress_log,
    truncate_progress_log,
    write_json,
    write_yaml,
)
from sieve.lock import LOCK, FolderLock
from sieve.prune.allocation import AllocationFile
from sieve.search.checkpoint import Checkpoint
from sieve.search.config import SearchConfig
from sieve.search.execution import ExecutionPlan

log = logging.getLogger(__name__)

CONFIG = "config.yaml"
BEST_ALLOCATION = "best_allocation.json"
FAILED = "failed.json"
#: every name sieve writes at the top of a run directory (``.NAME.*.tmp``: an atomic write in flight)
OWN_NAMES = (CONFIG, LOCK, FAILED, BEST_ALLOCATION, "stats", "checkpoint", "history.jsonl", "results.json",
             "frontier.json", "eval.json", "execution.json", "report", "ray_logs", "logs", "budget-*", ".*.tmp")


def input_digests(config: SearchConfig) -> dict[str, str]:
    """``{absolute path: digest}`` of every local file the task and the general corpus read."""
    digests = task_files(resolve_task(config.task), Path(config.workdir))
    general = Path(config.general)
    if config.general != BUILTIN_CORPUS and general.is_file():
        digests[str(general.resolve())] = file_digest(general)
    return digests


@dataclass(frozen=True)
class RunStatsStore:
    """A run keeps one statistics file per source and never replaces it with different statistics."""

    root: Path
    strict: bool = True

    def path(self, source: str, fingerprint: str) -> Path:
        return self.root / f"{source}.safetensors"


class RunDir:
    def __init__(self, path: str | Path, *, force: bool = False) -> None:
        """``force``: a new run may start beside files sieve did not write (it never deletes them)."""
        self.path = Path(path).expanduser().absolute()
        self._lock = FolderLock(self.path, "one search per run directory")
        self.force = force
        self.created = False  # set by :meth:`create`: this process made the run, so a failure marks it

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ------------------------------------------------------------------ layout
    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def stats(self) -> RunStatsStore:
        return RunStatsStore(self.path / "stats")

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint" / "state.json"

    @property
    def history_path(self) -> Path:
        return self.path / "history.jsonl"

    @property
    def best_allocation_path(self) -> Path:
        return self.path / BEST_ALLOCATION

    @property
    def results_path(self) -> Path:
        return self.path / "results.json"

    @property
    def execution_path(self) -> Path:
        return self.path / "execution.json"

    @property
    def frontier_path(self) -> Path:
        return self.path / "frontier.json"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    @property
    def ray_logs(self) -> Path:
        return self.path / "ray_logs"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def probe(self, budget: float) -> RunDir:
        """The sub-run of one Pareto probe."""
        return RunDir(self.path / f"budget-{budget:.3f}", force=self.force)

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is one of this run's own files (exports must never overwrite those)."""
        try:
            Path(path).absolute().relative_to(self.path)
        except ValueError:
            return False
        return True

    # ------------------------------------------------------------------ recognising
    @staticmethod
    def is_run(path: str | Path) -> bool:
        path = Path(path)
        return path.is_dir() and (path / CONFIG).is_file() and not (path / "config.json").exists()

    @classmethod
    def existing(cls, path: str | Path) -> RunDir:
        run = cls(path)
        if not run.config_path.is_file():
            raise SieveError(f"{run.path} is not a sieve run directory (no {CONFIG})")
        return run

    # ------------------------------------------------------------------ config
    def config(self) -> SearchConfig:
        return validate(SearchConfig, load_yaml(self.config_path), str(self.config_path))

    def write_config(self, config: SearchConfig) -> None:
        write_yaml(self.config_path, to_dict(config))

    def check_creatable(self, config: SearchConfig) -> None:
        """Refuse a new run here that could not be written or would lose or adopt data; reads only
        names and small files, so it runs before anything slow (and again in :meth:`create`)."""
        self._check_writable()
        self.check_not_in_use()
        self._check_leftovers(config)

    def create(self, config: SearchConfig) -> SearchConfig:
        """Start a new run here, under :meth:`lock`: :meth:`check_creatable`'s checks again (now no
        other process can change the directory), then the leftovers of this same search removed (it
        never finished a generation, or failed) and the config written with the input digests."""
        self._check_writable()
        self._check_leftovers(config)
        self._remove_leftovers()
        config = config.model_copy(update={"digests": input_digests(config)})
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_config(config)
        self.created = True
        return config

    def _check_writable(self) -> None:
        """A folder (or nothing yet) at a path whose names the file system takes, on a writable one."""
        existing, missing = self.path, []
        while not _present(existing):
            existing, missing = existing.parent, [existing.name, *missing]
        if not existing.is_dir():
            inside = f": {existing} is a file" if missing else " is a file"
            raise SieveError(f"run directory {self.path}{inside}, not a folder; choose another --run-dir")
        limit = _pathconf(existing, "PC_NAME_MAX", 255)
        for name in missing:
            if len(os.fsencode(name)) > limit:
                raise SieveError(f"run directory {self.path}: the name {name[:20]}… is {len(os.fsencode(name))} "
                                 f"bytes, longer than the file system allows ({limit}); choose a shorter --run-dir")
        if len(os.fsencode(str(self.path))) + 64 > _pathconf(existing, "PC_PATH_MAX", 4096):
            raise SieveError(f"run directory {str(self.path)[:40]}… is too long a path for the file system; "
                             "choose a shorter --run-dir")
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            raise SieveError(f"run directory {self.path} cannot be written: {existing} is on a read-only file system")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise SieveError(f"run directory {self.path} cannot be written: {existing} is not writable by this user")

    def check_not_in_use(self) -> None:
        """Refuse, before anything is written, a run another process holds or whose ``.lock`` is not sieve's."""
        self._lock.check_not_held()

    def _check_leftovers(self, config: SearchConfig) -> None:
        """What is here already may be restarted only when it is this same search and holds no finished generation."""
        if not self.path.is_dir():
            return
        foreign = sorted(n for n in os.listdir(self.path) if not _own(n))
        if foreign and not self.force:
            shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
            raise SieveError(f"run directory {self.path} holds files sieve did not write ({shown}); choose another "
                             "--run-dir, or pass --force to write beside them")
        ckpt = self.checkpoint()
        if ckpt is not None:
            raise SieveError(f"{self.path} holds a run at generation {ckpt.generation}; resume with "
                             f"`sieve search --resume {self.path}`, or choose another --run-dir")
        if self.config_path.exists():
            changed = differences(self.config().identity(), config.identity())
            if changed:
                raise SieveError(f"{self.path} holds another search that never finished a generation "
                                 f"({'; '.join(changed)}); choose another --run-dir")

    def _remove_leftovers(self) -> None:
        """Remove sieve's own files of an unfinished run (never the lock, never a file sieve did not write)."""
        if not self.path.is_dir():
            return
        own = sorted(n for n in os.listdir(self.path) if _own(n) and n != LOCK)
        for name in own:
            entry = self.path / name
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if own:
            fsync_dir(self.path)
            log.info("removed the leftovers of an unfinished run in %s (%s)", self.path, ", ".join(own))

    def resumed_config(self, overrides: dict[str, Any] | None = None) -> SearchConfig:
        """The saved config with ``overrides`` applied, checked (nothing is written): refuses a changed
        identity (naming every differing field), a changed input file (naming it and both digests) or
        a damaged history line (naming it)."""
        saved = self.config()
        merged = validate(SearchConfig, {**to_dict(saved), **(overrides or {})}, FLAGS)
        changed = differences(saved.identity(), merged.identity())
        if changed:
            raise SieveError(f"cannot resume {self.path} with a changed configuration ({'; '.join(changed)})")
        now = input_digests(saved)
        for path in sorted(set(saved.digests) | set(now)):
            before, after = saved.digests.get(path, "absent"), now.get(path, "absent")
            if before != after:
                raise SieveError(f"cannot resume {self.path}: input file {path} changed (digest {before} at the start, "
                                 f"{after} now)")
        self.history()
        return merged

    # ------------------------------------------------------------------ the writer's lock
    def lock(self) -> AbstractContextManager[None]:
        """Hold the run for this process (:class:`~sieve.lock.FolderLock`: released on any exit, even SIGKILL)."""
        return self._lock.hold()

    # ------------------------------------------------------------------ progress
    def checkpoint(self) -> Checkpoint | None:
        return Checkpoint.load(self.checkpoint_path)

    @property
    def has_checkpoint(self) -> bool:
        """Whether a generation finished (a resume continues from it; a new search is refused here)."""
        return self.checkpoint_path.is_file()

    def history(self) -> list[dict[str, Any]]:
        """One row per generation written; a damaged line is one error naming it (only a torn last
        line, what a kill mid-append leaves, is dropped)."""
        return read_progress_log(self.history_path, "generation")

    def append_history(self, row: dict[str, Any]) -> None:
        append_jsonl(self.history_path, row)

    def truncate_history(self, generation: int) -> None:
        """Drop history lines past ``generation`` (written by a generation that did not finish); the
        run continues, so an earlier failure no longer describes it."""
        truncate_progress_log(self.history_path, "generation", generation)
        self.failed_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ failure
    @property
    def failed_path(self) -> Path:
        return self.path / FAILED

    def mark_failed(self, error: BaseException | str) -> None:
        """Record why the run stopped after its directory was made (``failed.json``): ``sieve report``
        and a resume show it, and the same ``sieve search`` command restarts a run that finished no
        generation. Never raises: a failure to record (a full disk) must not hide the failure itself."""
        reason = error if isinstance(error, str) else str(error).strip().partition("\n")[0]
        if isinstance(error, BaseException) and not isinstance(error, SieveError):
            reason = f"{type(error).__name__}: {reason}"
        try:
            generation = self.checkpoint().generation if self.has_checkpoint else None
        except SieveError:
            generation = None
        try:
            write_json(self.failed_path, {"reason": reason, "at": f"{datetime.now():%Y-%m-%d %H:%M:%S}",
                                          "generation": generation})
        except OSError as exc:
            log.warning("could not mark %s failed (%s): %s", self.path, reason, exc)

    def failure(self) -> str | None:
        """Why the run failed (``failed.json``), or ``None``."""
        if not self.failed_path.is_file():
            return None
        try:
            return str(read_json(self.failed_path).get("reason", "unknown"))
        except (ValueError, UnicodeDecodeError, AttributeError):
            return "unknown (failed.json is damaged)"

    def best_allocation(self) -> AllocationFile:
        if not self.best_allocation_path.exists():
            raise SieveError(f"run {self.path} has no {BEST_ALLOCATION} yet (no generation finished)")
        return AllocationFile.read(self.best_allocation_path)

    def results(self) -> dict[str, Any]:
        if not self.results_path.exists():
            return {}
        try:
            body = read_json(self.results_path)
        except (ValueError, UnicodeDecodeError):
            raise SieveError(f"{self.results_path} is not valid JSON (damaged?)") from None
        if not isinstance(body, dict):
            raise SieveError(f"{self.results_path} must hold a JSON object")
        return body

    def write_execution(self, plan: ExecutionPlan) -> None:
        write_json(self.execution_path, to_dict(plan))

    def execution(self) -> ExecutionPlan | None:
        """The execution plan the run recorded (``None`` for a run that recorded none)."""
        if not self.execution_path.is_file():
            return None
        return validate(ExecutionPlan, read_json(self.execution_path), str(self.execution_path))

    def write_results(self, results: dict[str, Any]) -> None:
        write_json(self.results_path, results)
        self.failed_path.unlink(missing_ok=True)


def _own(name: str) -> bool:
    """Whether sieve writes a top-level entry of this name in a run directory."""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OWN_NAMES)


def _present(path: Path) -> bool:
    """Whether anything (a link included) is at ``path``; a name too long for the file system is not."""
    try:
        os.lstat(path)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
            return False
        raise
    return True


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return os.pathconf(path, name)
    except (OSError, ValueError):
        return default


def default_run_path(config: SearchConfig, root: Path = Path("runs")) -> Path:
    model = Path(config.model).name.replace(".", "_")
    task = Path(config.task).stem
    budget = f"b{config.budget:g}" if config.budget is not None else f"tol{config.tolerance:g}"
    return root / f"{model}-{task}-{budget}-{datetime.now():%Y%m%d-%H%M%S}"
