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
      eval.json, report/, ray_logs/, logs/

Each generation writes ``best_allocation.json`` and the history line first and the checkpoint
last, all atomically; on resume, history lines past the checkpoint are dropped, so a kill at any
moment loses at most the generation in flight. One process writes at a time (:meth:`RunDir.lock`,
an OS lock released on any exit). A resume is checked *before* anything is written: the config's
identity, the digests of the task and corpus files, then — once the model is loaded — the hash of
its weights.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sieve.config import FLAGS, differences, load_yaml, to_dict, validate
from sieve.data.general import BUILTIN_CORPUS
from sieve.data.task_spec import resolve_task, task_files
from sieve.errors import SieveError
from sieve.io import append_jsonl, file_digest, read_json, read_jsonl, write_json, write_text, write_yaml
from sieve.prune.allocation import AllocationFile
from sieve.search.checkpoint import Checkpoint
from sieve.search.config import SearchConfig

CONFIG = "config.yaml"
BEST_ALLOCATION = "best_allocation.json"


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
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()

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
        return RunDir(self.path / f"budget-{budget:.3f}")

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

    def create(self, config: SearchConfig) -> SearchConfig:
        """A new run here: refuses a directory that already holds one; records the input digests."""
        if self.checkpoint_path.exists() or self.history_path.exists() or self.best_allocation_path.exists():
            raise SieveError(f"{self.path} already holds a search; resume it with: sieve search --resume {self.path}")
        config = config.model_copy(update={"digests": input_digests(config)})
        self.path.mkdir(parents=True, exist_ok=True)
        self.write_config(config)
        return config

    def resumed_config(self, overrides: dict[str, Any] | None = None) -> SearchConfig:
        """The saved config with ``overrides`` applied, checked (nothing is written): refuses a changed
        identity (naming every differing field) or a changed input file (naming it and both digests)."""
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
        return merged

    # ------------------------------------------------------------------ the writer's lock
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run for this process (an OS lock, released on any exit, even SIGKILL)."""
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                raise SieveError(f"{self.path} is in use by {holder}; one search per run directory") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"PID {os.getpid()} on host {socket.gethostname()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n"
                      .encode(), 0)
            try:
                yield
            finally:
                os.ftruncate(fd, 0)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ progress
    def checkpoint(self) -> Checkpoint | None:
        return Checkpoint.load(self.checkpoint_path)

    def history(self) -> list[dict[str, Any]]:
        rows = read_jsonl(self.history_path)
        if not all(isinstance(r, dict) and isinstance(r.get("generation"), int) for r in rows):
            raise SieveError(f"{self.history_path} is damaged (a line without an integer 'generation')")
        return rows

    def append_history(self, row: dict[str, Any]) -> None:
        append_jsonl(self.history_path, row)

    def truncate_history(self, generation: int) -> None:
        """Drop history lines past ``generation`` (written by a generation that did not finish)."""
        rows = [r for r in self.history() if r["generation"] <= generation]
        write_text(self.history_path, "".join(json.dumps(r) + "\n" for r in rows))

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

    def write_results(self, results: dict[str, Any]) -> None:
        write_json(self.results_path, results)


def default_run_path(config: SearchConfig, root: Path = Path("runs")) -> Path:
    model = Path(config.model).name.replace(".", "_")
    task = Path(config.task).stem
    budget = f"b{config.budget:g}" if config.budget is not None else f"tol{config.tolerance:g}"
    return root / f"{model}-{task}-{budget}-{datetime.now():%Y%m%d-%H%M%S}"
