"""``sieve search``'s configuration: everything that determines a search's result.

Built once from ``--config`` YAML and flags (flags win), validated, frozen, and written to the run
directory's ``config.yaml`` — with the search space embedded (a run never re-reads its space file),
paths absolute, and the digest of every local file the task and the general corpus read, so the
run resumes from any directory and refuses to when a file changed. Defaults fit the 2-core CPU demo
(``make demo``); GPU runs use ``--config gpu`` (the settings behind the README's results).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from sieve.config import to_dict
from sieve.data.splits import SplitSpec
from sieve.metrics.quality import EvalSettings
from sieve.scoring.plan import BATCH_SIZE
from sieve.search.fitness import FitnessSpec
from sieve.search.fitness.task_nll import TaskNLL
from sieve.search.space import SpaceSpec
from sieve.stats.calibrate import CalibrationConfig
from sieve.workspace import InputsConfig, Workspace

#: fields a resume may change: they do not shape the result (the pruner's two modes give the same bits,
#: and so do graphed and eager scoring and every lane, see :mod:`sieve.metrics.scorer`)
VOLATILE = ("generations", "workers", "ray_address", "device", "digests", "pruner_mode", "max_gpu_memory",
            "cuda_graphs", "lanes", "patience")


class SearchConfig(InputsConfig):
    """``stages``: validation examples scored at each multi-fidelity stage before the full
    validation set; ``promote``: candidates promoted after each of those stages."""

    space: Annotated[SpaceSpec, BeforeValidator(SpaceSpec.resolve)] = Field(
        default_factory=lambda: SpaceSpec.load("per_matrix"))
    budget: float | None = Field(None, gt=0.0, lt=1.0)
    generations: int = Field(10, gt=0)
    offspring: int = Field(8, gt=0)
    population: int = Field(6, gt=0)
    seed: int = Field(0, ge=0)
    fitness: FitnessSpec = Field(default_factory=TaskNLL)
    general_weight: float = Field(0.0, ge=0.0)
    general_fitness_blocks: int = Field(8, gt=0)
    tolerance: float | None = Field(None, gt=0.0, lt=1.0)
    validation_examples: int = Field(64, gt=0)
    selection_examples: int = Field(
        0, ge=0, description="validation-pool documents held out from the search (disjoint from its validation "
        "examples); after the search every generation's best is scored on them by task NLL and the best there is "
        "the result (a long search's best may fit the validation examples rather than the task); 0: off")
    patience: int = Field(
        0, ge=0, description="stop the search once the generation's best has gone this many generations without "
        "improving on the held-out selection documents (selection_examples; scored by the search's fitness as the "
        "loop runs); the result is then chosen on them as without it; 0: run every generation")
    stages: tuple[int, ...] = (16,)
    promote: tuple[int, ...] = (2,)
    batch_size: int = Field(BATCH_SIZE, gt=0)
    pruner_mode: Literal["auto", "in_place", "on_the_fly"] = Field(
        "auto", description="on_the_fly: weights computed at every forward from the dense ones (memory ≈ 1× the "
        "model instead of 2×, one pruning pass per forward); in_place: one pass per candidate; auto: in_place where "
        "twice the pruned matrices fit in free memory, else on_the_fly")
    cuda_graphs: bool = Field(
        True, description="on a GPU with in-place pruning (or on-the-fly pruning with a per-weight score and "
        "unstructured levels), each stage's scoring is captured once as a CUDA graph and replayed for every "
        "candidate (a small model's forward is launch-bound)")
    lanes: int = Field(
        1, ge=1, le=16, description="in-process on a GPU: model replicas evaluating candidates side by side, each on "
        "its own CUDA stream (a small model's forward leaves the GPU mostly idle); fewer where they do not fit")
    batch_candidates: int = Field(
        1, ge=1, le=256, description="in-process: up to this many candidates share one forward, each with its own "
        "pruned weights (a small model's forward on a stage's few tokens is launch-bound); part of a run's identity: "
        "a candidate's fitness may differ in the last bits between one and several per forward")
    packed_rows: bool = Field(
        True, description="score several validation examples side by side in one row, unpadded, where the scoring "
        "plan's cost model finds that cheaper than padded length buckets (large models); false: buckets only. Part "
        "of a run's identity (the last bits differ)")
    workers: int = Field(0, ge=0)
    ray_address: str | None = None
    calibration: CalibrationConfig = Field(
        default_factory=lambda: CalibrationConfig(general_blocks=32, task_examples=64))
    evaluation: EvalSettings = Field(default_factory=lambda: EvalSettings(test_examples=200, ppl_blocks=16))
    digests: dict[str, str] = Field(default_factory=dict, description="local input files → content digest")

    @field_validator("ray_address")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is None or value == "auto" or value.startswith("ray://"):
            return value
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"must be 'auto', ray://... or HOST:PORT, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        if self.budget is None and self.tolerance is None:
            raise ValueError("--budget is required (a fraction in (0, 1)), or --tolerance X, or --resume DIR")
        if len(self.stages) != len(self.promote):
            raise ValueError("stages and promote need one entry per early stage")
        sizes = list(self.stages) + [self.validation_examples]
        if any(a >= b for a, b in zip(sizes, sizes[1:])) or any(s <= 0 for s in sizes):
            raise ValueError(f"stage sizes must increase up to validation_examples: {sizes}")
        counts = [self.offspring, *self.promote]
        if any(a < b for a, b in zip(counts, counts[1:])) or any(k <= 0 for k in counts):
            raise ValueError(f"promote must be positive and non-increasing from offspring: {counts}")
        if self.selection_examples and self.fitness.name == "general_kl":
            raise ValueError("selection_examples chooses by task NLL on held-out task documents; the general_kl "
                             "fitness reads no task documents (leave selection_examples at 0)")
        if self.patience and not self.selection_examples:
            raise ValueError("patience stops the search on held-out documents the search never scores: set "
                             "selection_examples too (e.g. 256)")
        if self.patience and not self.fitness.per_document:
            raise ValueError(f"patience scores each generation's best on held-out documents, but the {self.fitness.name} "
                             "fitness measures batches of validation documents together; use task_nll or task_acc")
        return self

    @property
    def in_process(self) -> bool:
        """Candidates are evaluated in this process (no ``--workers`` / ``--ray-address``)."""
        return self.workers == 0 and self.ray_address is None

    def split(self) -> SplitSpec:
        """How the task is split: calibration, validation and test caps from this config."""
        return SplitSpec(seed=self.seed, max_calibration=self.calibration.task_examples,
                         max_validation=self.validation_examples, max_test=self.evaluation.test_examples,
                         max_selection=self.selection_examples)

    def open_workspace(self) -> Workspace:
        return Workspace.open(self.model, task=self.task, general=self.general, dtype=self.dtype, device=self.device,
                              max_gpu_memory=self.max_gpu_memory,
                              split=self.split(), base_dir=Path(self.workdir))

    def identity(self) -> dict[str, Any]:
        """Fields a resume must not change (model, data, budget and everything that shapes results)."""
        data = to_dict(self)
        for volatile in VOLATILE:
            data.pop(volatile)
        return data
