"""A tuning checkpoint: one safetensors file, written atomically — data only, never pickle.

``checkpoint/state.safetensors`` holds every tensor a resume needs and its JSON state in the
file's metadata, so the checkpoint is one atomic rename (:func:`sieve.io.write_safetensors`):

==================================  ======================================================
``adapter/<param>``                 the adapters after ``step`` updates
``best/<param>``                    the adapters of the best validated step so far
``adam/<param>/{exp_avg,            AdamW's moments and step count per parameter
exp_avg_sq,step}``
``rng/torch``                       the CPU generator's state (LoRA dropout draws from it)
metadata ``state``                  JSON: ``step``, ``best_step``, ``best`` (validation NLL),
                                    ``since_best`` (validations without improvement), ``done``
==================================  ======================================================

Restoring all of it (and drawing batches as a pure function of the step, :mod:`sieve.tune.data`)
makes a resumed run compute the same adapters bit for bit on the CPU as one never interrupted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from sieve.errors import SieveError
from sieve.io import write_safetensors

FORMAT = "sieve.tune-checkpoint/v1"
MOMENTS = ("exp_avg", "exp_avg_sq", "step")


@dataclass(frozen=True)
class Progress:
    step: int = 0
    best_step: int = 0
    best: float = float("inf")
    since_best: int = 0
    done: bool = False


@dataclass
class Checkpoint:
    progress: Progress
    adapters: dict[str, torch.Tensor]
    best: dict[str, torch.Tensor]
    adam: dict[str, dict[str, torch.Tensor]]
    rng: torch.Tensor

    def save(self, path: Path) -> Path:
        tensors = {f"adapter/{n}": t for n, t in self.adapters.items()}
        tensors.update({f"best/{n}": t for n, t in self.best.items()})
        for name, state in self.adam.items():
            tensors.update({f"adam/{name}/{k}": torch.as_tensor(state[k]) for k in MOMENTS if k in state})
        tensors["rng/torch"] = self.rng
        state = {**asdict(self.progress), "best": None if self.progress.best == float("inf") else self.progress.best}
        return write_safetensors(path, tensors, metadata={"format": FORMAT, "state": json.dumps(state)})

    @classmethod
    def load(cls, path: Path) -> Checkpoint | None:
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            state = json.loads(meta["state"])
            state["best"] = float("inf") if state["best"] is None else float(state["best"])
            progress = Progress(**state)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SieveError(f"{path} is not a sieve tuning checkpoint ({exc}); remove it to start afresh") from None
        adam: dict[str, dict[str, torch.Tensor]] = {}
        for key, t in tensors.items():
            if key.startswith("adam/"):
                name, _, moment = key[len("adam/"):].rpartition("/")
                adam.setdefault(name, {})[moment] = t
        return cls(progress, _prefixed(tensors, "adapter/"), _prefixed(tensors, "best/"), adam, tensors["rng/torch"])


def _prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}


def adam_state(optimizer: torch.optim.Optimizer, names: Mapping[int, str]) -> dict[str, dict[str, torch.Tensor]]:
    """AdamW's per-parameter state by parameter name (``names``: ``id(param) → name``)."""
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if state:
                out[names[id(p)]] = {k: torch.as_tensor(state[k]).detach().clone() for k in MOMENTS}
    return out


def restore_adam(optimizer: torch.optim.Optimizer, names: Mapping[int, str],
                 state: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Put saved moments back (exact copies; the step count stays a float tensor, as AdamW keeps it)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            saved = state.get(names[id(p)])
            if saved is not None:
                optimizer.state[p] = {k: saved[k].clone().to(p.device) if k != "step" else saved[k].clone()
                                      for k in MOMENTS}
