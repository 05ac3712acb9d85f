"""Task data: lm-eval's requests for a task, split into calibration / validation / test.

sieve never re-implements a task's prompt. It loads the task with lm-eval's ``TaskManager``,
renders every document with the task's own ``fewshot_context`` and ``construct_requests``, and
keeps the resulting ``(context, continuation)`` strings (``Instance.args``). sieve's scorer
(:mod:`sieve.scoring`) then reads exactly what lm-eval would have scored.

A search needs three disjoint sets of documents:

* **calibration** -- task statistics for the pruning scores; drawn from the train (few-shot)
  split, minus the documents shown as few-shot examples in validation/test prompts;
* **validation** -- the search fitness;
* **test** -- the held-out report; always lm-eval's own evaluation split (``test`` when the task
  has one, else ``validation``), so sieve's test numbers are lm-eval's numbers.

Missing roles are *carved* from what exists with a seeded permutation
(``numpy.random.default_rng``): validation from train (else from the evaluation split),
calibration from validation (else from the evaluation split). A pool shared by ``k`` roles gives
each carved role ``min(cap, len(pool) // k)`` documents and the rest to its owner. Caps
(``max_*``) are applied after a seeded shuffle and the kept documents stay in dataset order.
Documents are compared by content, so a document never appears in two splits, and the few-shot
pool is stripped of validation/test documents whenever the two overlap (with ``first_n`` the
first ``num_fewshot`` pool documents are reserved before carving so the prompt stays the same).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import NonNegativeInt, PositiveInt

from sieve.config import Frozen
from sieve.data import lm_eval_compat
from sieve.data.render import Renderer, TaskExample, doc_key
from sieve.data.task_spec import TaskRef, resolve_task, working_directory
from sieve.errors import SieveError

if TYPE_CHECKING:  # lm-eval is slow to import: only load it when a task is loaded
    from lm_eval.api.task import Task

log = logging.getLogger(__name__)

SUPPORTED_OUTPUT_TYPES = ("multiple_choice", "loglikelihood", "loglikelihood_rolling")

# Independent random streams, so that e.g. changing max_validation never moves the test set.
_STREAM_CARVE, _STREAM_CAP = 1, 2
_ROLE_IDS = {"calibration": 0, "validation": 1, "test": 2, "selection": 3}


@dataclass(frozen=True)
class TaskSplits:
    """A task's requests, split into disjoint calibration / validation / test sets.

    ``sizes`` holds the final size of each split and, as ``<split>_pool``, how many documents
    were available before the cap; ``carved`` names the splits sieve carved itself.
    """

    name: str
    output_type: str
    calibration: tuple[TaskExample, ...]
    validation: tuple[TaskExample, ...]
    test: tuple[TaskExample, ...]
    sizes: dict[str, int] = field(default_factory=dict)
    carved: tuple[str, ...] = ()
    #: validation-pool documents outside ``validation``, held out to choose among a search's
    #: candidates (``selection_examples``); empty unless asked for
    selection: tuple[TaskExample, ...] = ()

    def calibration_texts(self) -> list[str]:
        """``context + gold continuation`` of each calibration example (what the model reads)."""
        return [ex.context + ex.continuations[ex.gold] for ex in self.calibration]

    def digest(self) -> str:
        """Content hash of every example of every split (changes with the prompt or the data)."""
        body = [[self.name, self.output_type]] + [
            [role, [[ex.context, list(ex.continuations), ex.gold] for ex in getattr(self, role)]]
            for role in ("calibration", "validation", "test", *(("selection",) if self.selection else ()))
        ]
        return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Loading


class SplitSpec(Frozen):
    """How a task's documents are split: ``seed`` drives carving and caps only (never the built-in
    data split nor the few-shot sampler); ``None`` caps keep everything. The calibration texts
    depend on all four (carving shares pools, and documents shown in prompts are excluded)."""

    seed: int = 0
    max_calibration: PositiveInt | None = 128
    max_validation: PositiveInt | None = 256
    max_test: PositiveInt | None = 500
    max_selection: NonNegativeInt = 0
    #: the selection role skips the first ``skip_selection`` documents of its seeded order (a tuning
    #: validates on documents past a search's own selection documents) and, with ``selection_up_to``,
    #: takes as many as remain when fewer than ``max_selection`` do
    skip_selection: NonNegativeInt = 0
    selection_up_to: bool = False

    @property
    def caps(self) -> dict[str, int | None]:
        return {"calibration": self.max_calibration, "validation": self.max_validation, "test": self.max_test,
                "selection": self.max_selection}


def load_task(spec: str, split: SplitSpec = SplitSpec(), *, base_dir: Path | None = None) -> TaskSplits:
    """Load ``spec`` through lm-eval and split its requests.

    ``spec`` is the built-in name ``rotten_tomatoes``, a path to an lm-eval task YAML, or a task
    name registered in lm-eval (:func:`~sieve.data.task_spec.resolve_task`). ``base_dir``: the
    working directory relative data files resolve against (default: the current one).
    """
    start = time.perf_counter()
    with working_directory(base_dir):
        task = load_lm_eval_task(resolve_task(spec))
        splits = build_splits(task, seed=split.seed, caps=split.caps, skip_selection=split.skip_selection,
                              selection_up_to=split.selection_up_to)
    log.info(
        "task %s: %d calibration / %d validation / %d test examples%s (%.1f s)",
        splits.name, len(splits.calibration), len(splits.validation), len(splits.test),
        f", carved {', '.join(splits.carved)}" if splits.carved else "",
        time.perf_counter() - start,
    )
    return splits


def load_lm_eval_task(ref: TaskRef) -> Task:
    """The one lm-eval ``Task`` ``ref`` names; any lm-eval failure is one SieveError line."""
    manager = lm_eval_compat.task_manager(registered=ref.registered)
    if ref.registered and ref.target not in manager.all_tasks:
        raise SieveError(
            f"unknown task {ref.spec!r}: not a built-in, an existing YAML path, or a task registered in lm-eval"
        )
    try:
        loaded = manager.load(ref.target)
    except SieveError:
        raise
    except Exception as err:  # lm-eval / datasets raise many types; all mean "bad task"
        first = (str(err).strip().splitlines() or [""])[0]
        raise SieveError(f"could not load lm-eval task {ref.spec!r}: {type(err).__name__}: {first}") from err
    tasks = loaded["tasks"]
    if len(tasks) != 1:
        raise SieveError(f"{ref.spec!r} is a group of {len(tasks)} lm-eval tasks; give one task (e.g. {sorted(tasks)[:3]})")
    return next(iter(tasks.values()))


# --------------------------------------------------------------------------------------------
# Splitting


TEST_CAP_SEED = 0


def _rng(seed: int, stream: int, role: str) -> np.random.Generator:
    return np.random.default_rng([seed, stream, _ROLE_IDS[role]])


def cap_indices(n: int, cap: int | None, rng: np.random.Generator) -> list[int]:
    """Indices of at most ``cap`` of ``n`` items: a seeded shuffle, cut, back in order."""
    if cap is None or cap >= n:
        return list(range(n))
    return sorted(int(i) for i in rng.permutation(n)[:cap])


def carve(
    pool: Sequence[Any], roles: Sequence[str], caps: Mapping[str, int | None], seed: int
) -> dict[str, list[Any]]:
    """Split ``pool`` among ``roles``; the last role owns the pool and takes the remainder.

    Each earlier (carved) role takes ``min(cap, len(pool) // len(roles))`` items of one seeded
    permutation, in order; all parts keep the pool's original order.
    """
    owner = roles[-1]
    perm = _rng(seed, _STREAM_CARVE, owner).permutation(len(pool))
    share = len(pool) // len(roles)
    out: dict[str, list[Any]] = {}
    start = 0
    for role in roles[:-1]:
        cap = caps.get(role)
        take = share if cap is None else min(cap, share)
        out[role] = [pool[i] for i in sorted(perm[start:start + take])]
        start += take
    out[owner] = [pool[i] for i in sorted(perm[start:])]
    return out


def _docs(task: Task, has: str, get: str) -> list[dict]:
    return list(getattr(task, get)()) if getattr(task, has)() else []


def _dedupe(docs: Iterable[dict], seen: set[str]) -> list[dict]:
    """Documents whose content is not in ``seen`` (which is updated), first copy kept."""
    out = []
    for d in docs:
        k = doc_key(d)
        if k not in seen:
            seen.add(k)
            out.append(d)
    return out


@dataclass(frozen=True)
class _Plan:
    """Which documents play which role, before rendering and caps."""

    parts: dict[str, list[dict]]
    carved: tuple[str, ...]
    num_fewshot: int
    random_fewshot: bool  # a seeded random sampler: render the test split in lm-eval's order


def plan_splits(task: Task, *, seed: int, caps: Mapping[str, int | None]) -> _Plan:
    """Assign the task's documents to calibration / validation / test (module docstring)."""
    name = task.task_name
    has_test, has_val = task.has_test_docs(), task.has_validation_docs()
    if not (has_test or has_val):
        raise SieveError(f"task {name!r} has neither a test nor a validation split")
    eval_docs = list(task.eval_docs)  # test if present, else validation: lm-eval's report
    val_docs = _docs(task, "has_validation_docs", "validation_docs") if has_test else []
    train_docs = _docs(task, "has_training_docs", "training_docs")
    if not eval_docs:
        raise SieveError(f"task {name!r}: its evaluation split is empty")

    num_fewshot = int(getattr(task.config, "num_fewshot", 0) or 0)
    sampler = getattr(task, "sampler", None) if num_fewshot > 0 else None
    first_n = sampler is not None and lm_eval_compat.is_first_n(sampler)
    # first_n always shows the first num_fewshot pool documents: keep them out of every split.
    reserved = {doc_key(d) for d in lm_eval_compat.sampler_documents(sampler)[:num_fewshot]} if first_n else set()

    def usable(docs: list[dict]) -> list[dict]:
        return [d for d in docs if doc_key(d) not in reserved]

    parts: dict[str, list[dict]] = {"test": usable(eval_docs)}
    carved: list[str] = []
    val_pool, train_pool = usable(val_docs), usable(train_docs)
    if val_pool:
        parts["validation"] = val_pool
    elif train_pool:
        parts.update(carve(train_pool, ["validation", "calibration"], caps, seed))
        carved.append("validation")
    else:
        parts.update(carve(parts["test"], ["validation", "calibration", "test"], caps, seed))
        carved += ["validation", "calibration"]
    if "calibration" not in parts:
        if train_pool:
            parts["calibration"] = train_pool
        else:
            parts.update(carve(parts["validation"], ["calibration", "validation"], caps, seed))
            carved.append("calibration")

    # Disjoint by content: test wins over validation, validation over calibration.
    seen: set[str] = set()
    for role in ("test", "validation", "calibration"):
        parts[role] = _dedupe(parts[role], seen)
        if not parts[role]:
            raise SieveError(f"task {name!r}: the {role} split is empty after splitting")

    # The few-shot pool never holds validation/test documents.
    if sampler is not None:
        held_out = {doc_key(d) for role in ("test", "validation") for d in parts[role]}
        pool = lm_eval_compat.sampler_documents(sampler)
        clean = [d for d in pool if doc_key(d) not in held_out]
        if len(clean) < len(pool):
            if len(clean) < num_fewshot:
                raise SieveError(f"task {name!r}: fewer than {num_fewshot} few-shot documents "
                                 "left outside the validation and test splits")
            log.info("task %s: removed %d validation/test documents from the few-shot pool",
                     name, len(pool) - len(clean))
            lm_eval_compat.replace_sampler_documents(sampler, clean)
    return _Plan(parts=parts, carved=tuple(carved), num_fewshot=num_fewshot,
                 random_fewshot=sampler is not None and not first_n)


def build_splits(task: Task, *, seed: int, caps: Mapping[str, int | None], skip_selection: int = 0,
                 selection_up_to: bool = False) -> TaskSplits:
    """Plan the splits of an lm-eval task, then render the kept documents into examples."""
    name = task.task_name
    output_type = getattr(task, "OUTPUT_TYPE", None) or task.config.output_type
    if output_type not in SUPPORTED_OUTPUT_TYPES:
        raise SieveError(
            f"task {name!r} has output_type {output_type!r}; sieve scores only "
            f"{', '.join(SUPPORTED_OUTPUT_TYPES)} tasks"
        )
    if getattr(task, "multiple_input", 0):
        raise SieveError(f"task {name!r} puts its choices in the context (multiple inputs); "
                         "sieve supports one context per document")
    plan = plan_splits(task, seed=seed, caps=caps)
    parts = plan.parts
    sizes = {f"{role}_pool": len(parts[role]) for role in ("calibration", "validation", "test")}
    renderer = Renderer(task, output_type, plan.num_fewshot)

    def keep(role: str, n: int) -> list[int]:
        # The test subset never depends on the user seed: every seed's report reads the same
        # test documents, so rows of one benchmark stay comparable.
        return cap_indices(n, caps.get(role), _rng(TEST_CAP_SEED if role == "test" else seed, _STREAM_CAP, role))

    with lm_eval_compat.compiled_templates():
        # Test in lm-eval's order over the whole split, so a random sampler draws what
        # `lm_eval` draws for the same document.
        test = renderer.render(parts["test"], keep("test", len(parts["test"])),
                               full_stream=plan.random_fewshot)
        kept = keep("validation", len(parts["validation"]))
        validation = renderer.render(parts["validation"], kept)
        selection = renderer.render(parts["validation"], _selection_indices(
            len(parts["validation"]), kept, caps.get("selection") or 0, seed, name, skip_selection, selection_up_to))
        # Calibration: minus every document shown as a few-shot example in those prompts.
        calib_docs = [d for d in parts["calibration"] if doc_key(d) not in renderer.shown]
        sizes["calibration_pool"] = len(calib_docs)
        calibration = renderer.render(calib_docs, keep("calibration", len(calib_docs)))

    for role, examples in (("calibration", calibration), ("validation", validation),
                           ("test", test)):
        if not examples:
            raise SieveError(f"task {name!r}: the {role} split is empty")
        sizes[role] = len(examples)
    return TaskSplits(
        name=name,
        output_type=output_type,
        calibration=tuple(calibration),
        validation=tuple(validation),
        test=tuple(test),
        sizes=sizes,
        carved=plan.carved,
        selection=tuple(selection),
    )


def _selection_indices(n: int, kept: Sequence[int], cap: int, seed: int, name: str, skip: int = 0,
                       up_to: bool = False) -> list[int]:
    """``cap`` of the validation pool's ``n`` documents outside the ``kept`` validation subset: the
    ``skip``-th to ``(skip + cap)``-th of one seeded order of the rest, so the documents of a
    smaller ``cap`` (``skip = 0``) are a prefix and ``skip = S`` never meets the first ``S``."""
    if not cap:
        return []
    taken = set(kept)
    rest = [i for i in range(n) if i not in taken]
    if len(rest) - skip < cap and not (up_to and len(rest) > skip):
        raise SieveError(f"task {name!r}: selection_examples={cap} needs that many validation documents beyond the "
                         f"{len(taken) + skip} the search validates and selects on, but the validation pool holds "
                         f"{n}; lower selection_examples or validation_examples")
    order = _rng(seed, _STREAM_CAP, "selection").permutation(len(rest))
    return sorted(rest[int(i)] for i in order[skip:skip + cap])
