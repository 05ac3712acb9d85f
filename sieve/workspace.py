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
from typing import Annotated, Literal

import torch
from pydantic import AfterValidator, Field, field_validator

from sieve.config import Frozen
from sieve.data.general import BUILTIN_CORPUS, GeneralCorpus
from sieve.data.splits import SplitSpec, TaskSplits, load_task
from sieve.data.task_spec import BUILTIN_TASKS
from sieve.errors import SieveError
from sieve.models.adapters import find_matrices
from sieve.models.identity import ModelIdentity
from sieve.models.loading import BUILTIN_MODELS, LoadedModel, load_model, resolve_model_path
from sieve.models.matrix import Matrix, weights_hash

log = logging.getLogger(__name__)

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
BUILTIN_NAMES = {*BUILTIN_MODELS, *BUILTIN_TASKS, BUILTIN_CORPUS}


def _device_name(value: str) -> str:
    if not _DEVICE.fullmatch(value):
        raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


#: A config field naming a device (checked when the config is validated, resolved when used).
DeviceName = Annotated[str, AfterValidator(_device_name)]


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


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` → ``bfloat16`` on a GPU (the throughput of a search), ``float32`` on the CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if resolve_device(device).startswith("cuda") else "float32"


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
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: DeviceName = "auto"
    max_gpu_memory: float | None = Field(
        None, gt=0, description="GiB of GPU memory for the model's weights; decoder blocks beyond it are streamed "
        "from host memory (default: all of them on the GPU, streaming only when they do not fit)")
    workdir: str = Field(default_factory=lambda: str(Path.cwd()))

    @field_validator("model", "task", "general")
    @classmethod
    def _absolute(cls, value: str) -> str:
        return value if value in BUILTIN_NAMES else absolute_if_path(value)



def place_on_gpu(loaded: LoadedModel, device: str, max_gpu_memory: float | None) -> None:
    """Move the model to ``device``; decoder blocks beyond ``max_gpu_memory`` GiB (or beyond 90 % of
    the free GPU memory, with a warning) stay in host memory and are streamed (:mod:`sieve.models.offload`)."""
    from sieve.models.adapters import adapter_for
    from sieve.models.offload import BlockStreamer, resident_blocks

    model = loaded.model
    weights = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    free, _ = torch.cuda.mem_get_info(torch.device(device).index or 0)
    budget = int(max_gpu_memory * 2**30) if max_gpu_memory is not None else int(0.9 * free)
    if weights <= budget:
        model.to(device)
        return
    _, blocks = adapter_for(model).blocks(model)
    resident = resident_blocks(model, blocks, budget)
    if max_gpu_memory is None:
        log.warning("the model's weights (%.1f GiB) exceed 90%% of the free GPU memory (%.1f GiB): %d of %d decoder "
                    "blocks are streamed from host memory (slower; set --max-gpu-memory to choose)",
                    weights / 2**30, free / 2**30, len(blocks) - resident, len(blocks))
    loaded.streamer = BlockStreamer(model, blocks, device, resident)


def free_memory(device: torch.device, max_gpu_memory: float | None = None) -> int | None:
    """Bytes still free on a CUDA ``device`` (within ``max_gpu_memory`` GiB when set); ``None`` elsewhere."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device.index or 0)
    if max_gpu_memory is not None:
        free = min(free, int(max_gpu_memory * 2**30) - torch.cuda.memory_allocated(device))
    return max(free, 0)


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
        dtype: str = "auto",
        device: str = "auto",
        split: SplitSpec = SplitSpec(),
        base_dir: Path | None = None,
        max_gpu_memory: float | None = None,
    ) -> Workspace:
        # Cheap validation first, so a typo fails before anything slow happens.
        dtype = resolve_dtype(dtype, device)
        device = resolve_device(device)
        resolve_model_path(model)
        corpus = GeneralCorpus.load(general) if general else None
        splits = load_task(task, split, base_dir=base_dir) if task else None
        if not device.startswith("cuda"):
            return cls(load_model(model, dtype=dtype, device=device), splits, corpus)
        loaded = load_model(model, dtype=dtype, device="cpu")
        place_on_gpu(loaded, device, max_gpu_memory)
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

    @property
    def dtype(self) -> str:
        """The dtype the model was loaded in (``float32``, ``bfloat16``, ...)."""
        return str(next(self.model.parameters()).dtype).removeprefix("torch.")

    @property
    def device(self) -> torch.device:
        """Where the model computes (the GPU also when some blocks live in host memory)."""
        streamer = self.loaded.streamer
        return streamer.device if streamer is not None else next(self.model.parameters()).device

    @cached_property
    def matrices(self) -> list[Matrix]:
        return find_matrices(self.model)

    def pin_identity(self) -> Workspace:
        """Take the weights hash and the model identity now, of the dense model: a search prunes and
        removes blocks in place, and a resume or an allocation file is checked against these."""
        self.weights_hash, self.model_identity  # noqa: B018 — cached properties, computed on first use
        return self

    @cached_property
    def weights_hash(self) -> str:
        """Hash of the dense prunable weights; taken on first use, which must be before any pruning."""
        return weights_hash(self.matrices)

    @cached_property
    def model_identity(self) -> ModelIdentity:
        """The model's config as loaded and its tokenizer's digest: with the weights hash, what a
        resume and an allocation file check the model against."""
        return ModelIdentity.of(self.model, self.tokenizer)
