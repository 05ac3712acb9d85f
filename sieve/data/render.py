"""Rendering: an lm-eval task's documents as the ``(context, continuation)`` strings lm-eval scores.

sieve never re-implements a task's prompt: :class:`Renderer` calls the task's own
``fewshot_context`` and ``construct_requests`` (as ``Task.build_all_requests`` does) and keeps each
request's strings as a :class:`TaskExample`, recording every document the few-shot sampler shows
(:mod:`sieve.data.splits` keeps those out of the calibration split).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sieve.data import lm_eval_compat

if TYPE_CHECKING:  # lm-eval is slow to import: only load it when a task is loaded
    from lm_eval.api.task import Task

log = logging.getLogger(__name__)

#: lm-eval's default few-shot seed (``lm_eval.defaults.DEFAULT_OTHER_SEED``): random few-shot
#: samplers draw the same examples as ``lm_eval --tasks ...`` does.
FEWSHOT_SEED = 1234


@dataclass(frozen=True)
class TaskExample:
    """One scored document.

    ``multiple_choice``: one continuation per choice, ``gold`` indexes the correct one.
    ``loglikelihood``: one continuation (the target), ``gold = 0``.
    ``loglikelihood_rolling``: ``context = ""`` and the whole text as the single continuation.
    """

    context: str
    continuations: tuple[str, ...]
    gold: int


def doc_key(doc: Mapping[str, Any]) -> str:
    """Content identity of a document (used for disjointness and few-shot exclusion)."""
    return json.dumps(doc, sort_keys=True, default=str, ensure_ascii=False)


class Renderer:
    """Turns documents into :class:`TaskExample` with the task's own lm-eval methods.

    Mirrors ``Task.build_all_requests``: ``fewshot_context`` (same keyword arguments) then
    ``construct_requests``; records every few-shot document the sampler hands out.
    """

    def __init__(self, task: Task, output_type: str, num_fewshot: int) -> None:
        self.task = task
        self.output_type = output_type
        self.num_fewshot = num_fewshot
        self.shown: set[str] = set()

    def render(
        self, docs: Sequence[dict], keep: Iterable[int], *, full_stream: bool = False
    ) -> list[TaskExample]:
        """Examples for ``docs[i], i in keep``; ``full_stream`` renders all docs in order so a
        random few-shot sampler's stream matches lm-eval's (the rest are discarded)."""
        task = self.task
        keep = list(keep)
        wanted = set(keep)
        if hasattr(task, "set_fewshot_seed"):
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
        order = range(len(docs)) if full_stream else keep
        out: list[TaskExample] = []
        record = lambda shown: self.shown.update(doc_key(d) for d in shown)  # noqa: E731
        with lm_eval_compat.recording_fewshot(task if self.num_fewshot > 0 else None, record) as recording:
            for doc_id in order:
                recording(doc_id in wanted)
                example = self.example(docs[doc_id], doc_id)
                if doc_id in wanted and example is not None:
                    out.append(example)
        return out

    def example(self, doc: dict, doc_id: int) -> TaskExample | None:
        task = self.task
        if hasattr(task, "doc_to_prefix"):
            ctx = task.fewshot_context(
                doc=doc,
                num_fewshot=self.num_fewshot,
                system_instruction=None,
                apply_chat_template=False,
                fewshot_as_multiturn=False,
                chat_template=None,
                gen_prefix=task.doc_to_prefix(doc),
            )
        else:  # pragma: no cover - non-configurable (Python) tasks
            ctx = task.fewshot_context(doc=doc, num_fewshot=self.num_fewshot)
        name = getattr(task.config, "task", None)
        insts = task.construct_requests(
            doc=doc, ctx=ctx, metadata=(name, doc_id, getattr(task.config, "repeats", 1))
        )
        insts = insts if isinstance(insts, list) else [insts]
        if self.output_type == "loglikelihood_rolling":
            (text,) = insts[0].args[:1]
            return TaskExample(context="", continuations=(text,), gold=0)
        if self.output_type == "loglikelihood":
            context, continuation = insts[0].args[:2]
            return TaskExample(context=context, continuations=(continuation,), gold=0)
        choices = task.doc_to_choice(doc)
        args = [inst.args[:2] for inst in insts[: len(choices)]]  # drop acc_mutual_info extras
        gold = gold_index(task.doc_to_target(doc), choices)
        if gold is None:
            log.warning("task %s: document %d has no valid gold choice; skipped", name, doc_id)
            return None
        return TaskExample(
            context=args[0][0], continuations=tuple(a[1] for a in args), gold=gold
        )


def gold_index(target: Any, choices: Sequence[str]) -> int | None:
    """lm-eval's gold rule: an index, or a choice string; a list (several golds) -> the first."""
    if isinstance(target, list):
        if not target:
            return None
        target = target[0]
    if isinstance(target, str):
        return choices.index(target) if target in choices else None
    if isinstance(target, (int, np.integer)) and 0 <= int(target) < len(choices):
        return int(target)
    return None
