"""Workspace: the model, its matrices, the task and the general corpus, loaded once per command.

Every command (prune, eval, export, search) starts from the same inputs; this shell loads them,
resolves the device, and hands typed objects to the pure parts below. Benchmarks and Pareto probes
build one workspace and hand it to every search they run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator

from sieve.config import Frozen
from sieve.data.general import BUILTIN_CORPUS, GeneralCorpus
from sieve.data.splits import SplitSpec, TaskSplits, load_task
from sieve.data.task_spec import BUILTIN_TASKS
from sieve.errors import SieveError
from sieve.models.adapters import find_matrices
from sieve.models.loading import BUILTIN_MODELS, LoadedModel, load_model, resolve_model_path
from sieve.models.matrix import Matrix, weights_hash

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
BUILTIN_NAMES = {*BUILTIN_MODELS, *BUILTIN_TASKS, BUILTIN_CORPUS}


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; an unknown or absent device is one error line."""
    if not _DEVICE.fullmatch(device):
        raise SieveError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise SieveError(f"device {device} is not available ({torch.cuda.device_count()} CUDA devices visible)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise SieveError("device mps is not available")
    return device


def absolute_if_path(spec: str) -> str:
    """An existing file or folder as its absolute, resolved path; names (built-in, hub) unchanged."""
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


class InputsConfig(Frozen):
    """What every command reads: model, task, general corpus, and how the model is loaded.

    Paths are recorded absolute and ``workdir`` (where relative paths inside a task YAML resolve,
    as in lm-eval) is the directory the command started in, so a run resumes from anywhere.
    """

    model: str = "smollm2-135m"
    task: str = "rotten_tomatoes"
    general: str = "wikipedia"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = "auto"
    workdir: str = Field(default_factory=lambda: str(Path.cwd()))

    @field_validator("model", "task", "general")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return value if value in BUILTIN_NAMES else absolute_if_path(value)

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.fullmatch(value):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value


@dataclass
class Workspace:
    loaded: LoadedModel
    task: TaskSplits | None
    corpus: GeneralCorpus | None

    @classmethod
    def open(
        cls,
        model: str,
        *,
        task: str | None,
        general: str | None,
        dtype: str = "float32",
        device: str = "auto",
        split: SplitSpec = SplitSpec(),
        base_dir: Path | None = None,
    ) -> Workspace:
        # Cheap validation first, so a typo fails before anything slow happens.
        device = resolve_device(device)
        resolve_model_path(model)
        corpus = GeneralCorpus.load(general) if general else None
        splits = load_task(task, split, base_dir=base_dir) if task else None
        loaded = load_model(model, dtype=dtype, device=device)
        return cls(loaded, splits, corpus)

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @cached_property
    def matrices(self) -> list[Matrix]:
        return find_matrices(self.model)

    @cached_property
    def weights_hash(self) -> str:
        """Hash of the dense prunable weights; taken on first use, which must be before any pruning."""
        return weights_hash(self.matrices)
