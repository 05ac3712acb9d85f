"""Every place sieve reaches into lm-eval beyond ``TaskManager.load`` and ``simple_evaluate``.

lm-eval is sieve's source of truth for prompts, so sieve renders documents with the task's own
methods; four things need more than the public API. Each is here, and only here, with a test in
``tests/data/test_lm_eval_compat.py`` that fails loudly when a new lm-eval changes it:

* :func:`task_manager` — ``TaskManager(include_defaults=False)`` skips indexing lm-eval's
  thousands of built-in YAMLs (~5 s) when a task is given by path;
* :func:`compiled_templates` — ``lm_eval.utils.apply_template`` recompiles its Jinja template on
  every call (~0.3 ms, most of the time spent rendering a split); this caches the compiled template
  while sieve renders. If lm-eval moves it, rendering is only slower and one warning says so;
* :func:`recording_fewshot` — wraps a few-shot sampler's ``sample`` to learn which documents the
  prompts show, so that calibration never contains them. Without it disjointness cannot be
  guaranteed, so a missing ``sample`` is an error, not a warning;
* :func:`is_first_n` — whether a sampler is lm-eval's ``FirstNSampler`` (the same first documents
  in every prompt), and :func:`sampler_documents` / :func:`replace_sampler_documents`, its pool.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sieve.errors import SieveError

log = logging.getLogger(__name__)

_WARNED: set[str] = set()


def _warn_once(what: str) -> None:
    if what not in _WARNED:
        _WARNED.add(what)
        log.warning("lm-eval changed: %s", what)


def task_manager(*, registered: bool) -> Any:
    """A ``TaskManager``; ``registered=False`` skips indexing lm-eval's own task YAMLs."""
    from lm_eval.tasks import TaskManager

    if registered:
        return TaskManager()
    try:
        return TaskManager(include_defaults=False)
    except TypeError:
        _warn_once("TaskManager has no include_defaults; indexing every built-in task (~5 s per load)")
        return TaskManager()


@contextmanager
def compiled_templates() -> Iterator[None]:
    """Render with each of lm-eval's Jinja templates compiled once (identical output); restored on exit."""
    from lm_eval import utils

    original = getattr(utils, "apply_template", None)
    env = getattr(utils, "env", None)
    if original is None or env is None:
        _warn_once("lm_eval.utils.apply_template/env are gone; templates are compiled per document (slower)")
        yield
        return
    compile_template = functools.lru_cache(maxsize=512)(env.from_string)

    def apply_template(template: str, doc: dict) -> str:
        return compile_template(template).render(**doc)

    utils.apply_template = apply_template
    try:
        yield
    finally:
        utils.apply_template = original


@contextmanager
def recording_fewshot(task: Any, record: Callable[[list[dict]], None]) -> Iterator[Callable[[bool], None]]:
    """While active, every batch of few-shot documents the task's sampler hands out goes to
    ``record``; the yielded ``switch(on)`` pauses and resumes recording. No sampler: a no-op."""
    sampler = getattr(task, "sampler", None)
    state = {"on": True}
    if sampler is None:
        yield lambda on: None
        return
    original = getattr(sampler, "sample", None)
    if not callable(original):
        raise SieveError(f"lm-eval's few-shot sampler {type(sampler).__name__} has no sample(); sieve cannot "
                         "tell which documents prompts show (calibration could overlap them)")

    def sample(*args: Any, **kwargs: Any) -> Any:
        out = original(*args, **kwargs)
        if state["on"]:
            record(list(out))
        return out

    sampler.sample = sample
    try:
        yield lambda on: state.__setitem__("on", on)
    finally:
        del sampler.sample  # the class's method again


def is_first_n(sampler: Any) -> bool:
    """lm-eval's ``FirstNSampler``: every prompt shows the first ``num_fewshot`` pool documents."""
    try:
        from lm_eval.api.samplers import FirstNSampler
    except ImportError:
        _warn_once("lm_eval.api.samplers.FirstNSampler is gone; recognising it by class name")
        return type(sampler).__name__ == "FirstNSampler"
    return isinstance(sampler, FirstNSampler)


def sampler_documents(sampler: Any) -> list[dict]:
    """The sampler's few-shot pool."""
    pool = getattr(sampler, "df", None)
    if pool is None:
        raise SieveError(f"lm-eval's few-shot sampler {type(sampler).__name__} has no 'df' pool; sieve cannot "
                         "keep validation/test documents out of the prompts")
    return list(pool)


def replace_sampler_documents(sampler: Any, documents: list[dict]) -> None:
    """Shrink the sampler's pool (validation/test documents removed)."""
    if not callable(getattr(sampler, "replace_df", None)):
        raise SieveError(f"lm-eval's few-shot sampler {type(sampler).__name__} has no replace_df(); sieve cannot "
                         "keep validation/test documents out of the prompts")
    sampler.replace_df(documents)
