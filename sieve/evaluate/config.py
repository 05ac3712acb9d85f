"""``sieve eval``'s configuration: one validated, frozen model built from the flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from sieve.metrics.quality import EvalSettings
from sieve.workspace import InputsConfig


class EvalConfig(InputsConfig):
    """``model`` is what is evaluated: a model (pruned folder, built-in, HF folder, ``.gguf``), a run
    directory or an allocation file. For a run or a file, ``task`` and ``general`` default to the
    allocation's own unless given."""

    seed: int = Field(0, ge=0)
    evaluation: EvalSettings = Field(default_factory=EvalSettings)
    baseline: bool = False
    lm_eval_tasks: tuple[str, ...] = ()
    limit: int | None = Field(None, ge=1)
    output: Path | None = None

    @field_validator("lm_eval_tasks", mode="before")
    @classmethod
    def _task_list(cls, value):
        """``"a,b, c"`` → ``("a", "b", "c")``; an empty entry is an error."""
        if isinstance(value, str):
            value = [t.strip() for t in value.split(",")]
        if any(not t for t in value):
            raise ValueError("must be a comma-separated list of task names or YAML paths")
        return value
