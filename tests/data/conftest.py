"""Fixtures for task-loading tests: an isolated sieve cache and local lm-eval task YAMLs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")



COLOURS = ["red apple", "blue sky over the sea", "green grass", "yellow sun", "black night"]


def mc_docs(n: int, start: int = 0) -> list[dict]:
    """Three-choice documents with multi-token choices; answer rotates 0, 1, 2."""
    docs = []
    for i in range(start, start + n):
        choices = [COLOURS[(i + k) % len(COLOURS)] for k in range(3)]
        docs.append({"question": f"Item {i}: which colour words fit?", "choices": choices,
                     "answer": i % 3})
    return docs


def write_jsonl(path: Path, docs: list[dict]) -> Path:
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


@pytest.fixture
def make_task(tmp_path: Path) -> Callable[..., Path]:
    """Write a local JSONL-backed multiple-choice lm-eval task YAML; return its path.

    ``splits`` maps split name -> number of docs (docs are disjoint across splits);
    ``overrides`` are merged into the YAML config.
    """

    def make(splits: dict[str, int], name: str = "local_mc", **overrides: object) -> Path:
        files, start = {}, 0
        for split, n in splits.items():
            files[split] = str(write_jsonl(tmp_path / f"{name}_{split}.jsonl",
                                           mc_docs(n, start)))
            start += n
        cfg: dict[str, object] = {
            "task": name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": files},
            "output_type": "multiple_choice",
            "doc_to_text": "Q: {{question}}\nA:",
            "doc_to_choice": "{{choices}}",
            "doc_to_target": "answer",
            "num_fewshot": 2,
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
        }
        for role in ("train", "validation", "test"):
            if role in splits:
                cfg[{"train": "training_split"}.get(role, f"{role}_split")] = role
        cfg.update(overrides)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    return make
