"""``sieve tune``'s configuration: every setting that shapes the tuned weights, in one frozen model.

Built once from ``--config`` YAML (a built-in preset such as ``gpu``, in
``sieve/builtin/tune_configs/``, or a file) and the flags (flags win), validated, and
written to the output folder's ``tune.yaml`` with the base's identity and the data digests, so a
``--resume`` checks it is continuing the same tuning of the same base on the same data. Defaults
fit the 2-core CPU demo on SmolLM2-135M; ``--config gpu`` holds the GPU recipe.

The recipe's defaults follow SQFT's SparsePEFT (learning rate 3e-4, α = 2r) at a rank and a step
count a CPU finishes in minutes; the loss is the causal-LM loss of the gold continuation (context +
gold choice, loss on the choice's tokens only), plus with ``distill`` a KL term to the dense model
(:mod:`sieve.tune.loss`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, field_validator, model_validator

from sieve.config import Frozen, to_dict
from sieve.resources import builtin_names, yaml_file
from sieve.scoring.plan import BATCH_SIZE
from sieve.workspace import DeviceName, absolute_if_path

#: fields a resume may change (they do not shape the result) and the recorded provenance, checked separately
VOLATILE = ("device", "eval_batch_size", "digests", "base")


class LoraSettings(Frozen):
    """``ΔW = B·A·α/r`` on every targeted Linear; ``targets``: shell patterns over a module's name
    inside its decoder block (``mlp.*``, ``self_attn.q_proj``; a factorised matrix's parts are
    ``….project`` / ``….expand``), empty = every Linear of the decoder blocks."""

    rank: PositiveInt = 8
    alpha: float = Field(16.0, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    targets: tuple[str, ...] = ()

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class DistillSettings(Frozen):
    """``loss = CE + weight · ((1 − general_mix) · KL_task + general_mix · KL_general)``, each KL
    ``T² · KL(softmax(z_dense/T) ‖ softmax(z/T))`` per token; general text from the run's corpus
    (``general_batch`` blocks of ``block_len`` tokens a step, cycled through a pool of ``general_blocks``)."""

    weight: float = Field(1.0, ge=0.0)
    general_mix: float = Field(0.5, ge=0.0, le=1.0)
    temperature: float = Field(1.0, gt=0.0)
    general_blocks: PositiveInt = 64
    general_batch: PositiveInt = 2
    block_len: PositiveInt = 128


class TuneConfig(Frozen):
    """``source``: the search run or exported folder tuned; ``task`` / ``general``: default the base's
    own. ``eval_every``: validation every so many steps (and at step 0, the untuned model); the best
    step by validation task NLL is the one exported; ``patience``: stop after that many validations
    without improvement (``None``: run all ``steps``); ``checkpoint_every``: steps between checkpoints."""

    source: str
    task: str | None = None
    general: str | None = None
    steps: PositiveInt = 40
    batch_size: PositiveInt = 4
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(4, ge=0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    keep_zeros: bool = Field(True, description="mask the adapters of matrices with zeros (false: plain LoRA, "
                             "whose merge fills the zeros in; the ablation)")
    distill: DistillSettings | None = None
    train_examples: PositiveInt | None = 256
    validation_examples: PositiveInt = 32
    eval_every: PositiveInt = 10
    patience: PositiveInt | None = None
    checkpoint_every: PositiveInt = 10
    max_length: PositiveInt = 1024
    dtype: Literal["float32", "bfloat16"] = "float32"
    seed: int = Field(0, ge=0)
    device: DeviceName = "auto"
    eval_batch_size: PositiveInt = BATCH_SIZE
    workdir: str = Field(default_factory=lambda: str(Path.cwd()), description="where a task's relative paths resolve")
    digests: dict[str, str] = Field(default_factory=dict, description="data digests, recorded at the start")
    base: dict[str, Any] = Field(default_factory=dict, description="the base's identity, recorded at the start")

    @field_validator("source", "task", "general")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        return None if value is None else absolute_if_path(value)


    @model_validator(mode="after")
    def _consistent(self) -> TuneConfig:
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below steps ({self.steps})")
        return self

    def identity(self) -> dict[str, Any]:
        """What a resume must not change."""
        data = to_dict(self)
        for key in VOLATILE:
            data.pop(key)
        return data


def preset_file(spec: str) -> Path:
    """``--config``: a built-in tune preset name (``gpu``: ``sieve/builtin/tune_configs/gpu.yaml``) or a YAML path."""
    return yaml_file(spec, "tune_configs", "tune config")


def preset_names() -> list[str]:
    """Names of the built-in tune presets."""
    return builtin_names("tune_configs")
