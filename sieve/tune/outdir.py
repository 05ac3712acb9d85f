"""A tuning's output folder: one type that owns its layout; the finished folder is a model folder.

::

    OUT/
      tune.yaml                       the validated TuneConfig with the base's identity and data digests
      .lock                           the writer's PID while a tuning holds the folder (search's lock)
      history.jsonl                   one line per step (loss, learning rate; validation where measured)
      checkpoint/state.safetensors    adapters, best adapters, AdamW moments, RNG, progress (one atomic file)
      failed.json                     why it stopped, when it failed
      --- once finished ---
      config.json, model.safetensors, tokenizer files     the merged model (``sieve.load_pretrained`` /
                                                          ``from_pretrained`` load it)
      allocation.json, sieve_model_id                     the base's allocation and dense model
      adapters/best.safetensors                           the best step's adapters (before the merge)
      tuning.json                                         summary: settings, base, digests, before / after,
                                                          written last: its presence marks a finished tuning
      eval.json, report/                                  ``sieve eval`` / ``sieve report``

The lock is :class:`~sieve.lock.FolderLock`, as a search's run directory's (an OS lock on a plain file opened with
``O_NOFOLLOW``, released on any exit, even SIGKILL). The checkpoint folder is removed once the
model is written.
"""

from __future__ import annotations

import os
import shutil
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from sieve.config import load_yaml, to_dict, validate
from sieve.errors import SieveError
from sieve.io import (
    append_jsonl,
    fsync_dir,
    read_json,
    read_progress_log,
    truncate_progress_log,
    write_json,
    write_yaml,
)
from sieve.lock import LOCK, FolderLock
from sieve.tune.checkpoint import Checkpoint
from sieve.tune.config import TuneConfig

CONFIG = "tune.yaml"
SUMMARY = "tuning.json"


def is_tuned(path: str | Path) -> bool:
    """Whether ``path`` is a finished tuning's output folder."""
    path = Path(path)
    return (path / SUMMARY).is_file() and (path / CONFIG).is_file()


class TuneDir:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()
        self._lock = FolderLock(self.path, "one tuning per output folder")

    def __repr__(self) -> str:
        return f"TuneDir({str(self.path)!r})"

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint" / "state.safetensors"

    @property
    def history_path(self) -> Path:
        return self.path / "history.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def adapters_path(self) -> Path:
        return self.path / "adapters" / "best.safetensors"

    @property
    def failed_path(self) -> Path:
        return self.path / "failed.json"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    @property
    def report_dir(self) -> Path:
        return self.path / "report"

    # ------------------------------------------------------------------ config and state
    def config(self) -> TuneConfig:
        if not self.config_path.is_file():
            raise SieveError(f"{self.path} is not a sieve tuning folder (no {CONFIG})")
        return validate(TuneConfig, load_yaml(self.config_path), str(self.config_path))

    def write_config(self, config: TuneConfig) -> None:
        write_yaml(self.config_path, to_dict(config))

    def checkpoint(self) -> Checkpoint | None:
        return Checkpoint.load(self.checkpoint_path)

    def history(self) -> list[dict[str, Any]]:
        return read_progress_log(self.history_path, "step")

    def append_history(self, row: dict[str, Any]) -> None:
        append_jsonl(self.history_path, row)

    def truncate_history(self, step: int) -> None:
        """Drop the lines of steps past the checkpoint (a resume computes them again)."""
        truncate_progress_log(self.history_path, "step", step)

    def summary(self) -> dict[str, Any]:
        try:
            body = read_json(self.summary_path)
        except (OSError, ValueError, UnicodeDecodeError):
            raise SieveError(f"{self.summary_path} is missing or not valid JSON; the tuning did not finish") from None
        if not isinstance(body, dict) or not isinstance(body.get("base"), dict):
            raise SieveError(f"{self.summary_path} is damaged (no 'base' object)")
        return body

    def mark_failed(self, reason: str) -> None:
        try:
            write_json(self.failed_path, {"reason": reason})
        except OSError:
            pass

    # ------------------------------------------------------------------ creating and locking
    def check_new(self, *, force: bool) -> None:
        """Refuse, before anything slow, a new tuning where one is unfinished (unless ``force``) or
        where another process holds the folder (always). Other leftovers are :func:`check_output`'s."""
        self._lock.check_not_held()
        if self.config_path.is_file() and self.checkpoint_path.is_file() and not force:
            raise SieveError(f"{self.path} holds an unfinished tuning; continue it with `sieve tune --resume "
                             f"{self.path}`, or pass --force to start afresh")

    def clear(self) -> None:
        """Remove everything in the folder but the lock (``--force``: a previous output is replaced)."""
        if not self.path.is_dir():
            return
        for name in os.listdir(self.path):
            if name == LOCK:
                continue
            entry = self.path / name
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        fsync_dir(self.path)

    def lock(self) -> AbstractContextManager[None]:
        return self._lock.hold()
