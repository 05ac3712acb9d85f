"""Workspace: the model, its matrices, the task and the general corpus, loaded once per command.

Every command (prune, eval, search) starts from the same three inputs; this shell loads them,
resolves the device, and hands typed objects to the pure parts below.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import torch

from sieve.data.general import GeneralCorpus
from sieve.data.tasks import TaskSplits, load_task
from sieve.models.arch import Matrix, find_matrices
from sieve.models.loading import LoadedModel, load_model, resolve_model_path

log = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


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
        seed: int = 0,
        max_calibration: int = 128,
        max_validation: int | None = 256,
        max_test: int | None = 500,
    ) -> Workspace:
        # Cheap validation first, so a typo fails before anything slow happens.
        resolve_model_path(model)
        corpus = GeneralCorpus.load(general) if general else None
        splits = (
            load_task(task, seed=seed, max_calibration=max_calibration, max_validation=max_validation, max_test=max_test)
            if task
            else None
        )
        loaded = load_model(model, dtype=dtype, device=resolve_device(device))
        return cls(loaded, splits, corpus)

    @property
    def model(self) -> torch.nn.Module:
        return self.loaded.model

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @cached_property
    def matrices(self) -> list[Matrix]:
        return find_matrices(self.model)
