"""One resolver for task specs (``--task`` and ``--tasks`` alike), and the files a task reads.

A spec is a built-in name (:data:`BUILTIN_TASKS`: ``rotten_tomatoes``, ``python_names``), a path to an lm-eval task YAML, or a task name
registered in lm-eval. :func:`resolve_task` turns it into a :class:`TaskRef`: what to hand to
``TaskManager.load`` (the YAML's absolute path, or the registered name) and lm-eval's task name.

:func:`task_files` lists the local files a YAML task depends on, with a content digest each, so a
run can record them and refuse to resume when one changed: the YAML, every ``include:``d YAML,
the Python modules its ``!function`` tags name, and local ``dataset_kwargs.data_files``. **A task
YAML is code**: lm-eval imports the ``!function`` modules next to it; only use task YAMLs you trust.
Relative data files resolve against the working directory (as in lm-eval); a run records that
directory and loads its task from there on resume.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sieve.errors import SieveError
from sieve.io import file_digest

#: Built-in task name → ``module:function`` that materialises its data and returns its YAML's path.
BUILTIN_TASKS = {
    "rotten_tomatoes": "sieve.data.rotten_tomatoes:materialize_rotten_tomatoes",
    "python_names": "sieve.data.python_names:materialize_python_names",
}


@dataclass(frozen=True)
class TaskRef:
    spec: str  # as the user gave it
    target: str  # what TaskManager.load takes: an absolute YAML path, or a registered name
    name: str  # lm-eval's task name
    yaml: Path | None  # the task's YAML file (None for a registered name)

    @property
    def registered(self) -> bool:
        return self.yaml is None


class _IgnoreTags(yaml.SafeLoader):
    """Safe YAML loader that accepts (and ignores) lm-eval's ``!function`` tags: nothing runs."""


_IgnoreTags.add_multi_constructor("!", lambda loader, suffix, node: None)


class _FunctionTags(yaml.SafeLoader):
    """Safe loader that turns ``!function module.fn`` into the marker ``("!function", "module.fn")``."""


_FunctionTags.add_multi_constructor(
    "!", lambda loader, suffix, node: ("!function", loader.construct_scalar(node)) if suffix == "function" else None
)


def read_task_yaml(path: Path, loader: type[yaml.SafeLoader] = _IgnoreTags) -> Any:
    try:
        return yaml.load(path.read_text(), Loader=loader)  # noqa: S506 (safe loaders; tags never run)
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise SieveError(f"task YAML {path} does not parse{where}: {getattr(err, 'problem', None) or err}") from None


def looks_like_path(spec: str) -> bool:
    return spec.endswith((".yaml", ".yml")) or "/" in spec or "\\" in spec


def resolve_task(spec: str) -> TaskRef:
    """Built-in name, YAML path or registered lm-eval name → :class:`TaskRef` (registration is checked on load)."""
    if spec in BUILTIN_TASKS:
        module, _, function = BUILTIN_TASKS[spec].partition(":")
        path = getattr(importlib.import_module(module), function)()
        return TaskRef(spec, str(path), _task_name(path), path)
    if looks_like_path(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise SieveError(f"task YAML not found: {path}")
        return TaskRef(spec, str(path.resolve()), _task_name(path), path.resolve())
    return TaskRef(spec, spec, spec, None)


def _task_name(path: Path) -> str:
    cfg = read_task_yaml(path)
    if isinstance(cfg, dict) and cfg.get("group") and not cfg.get("task"):
        raise SieveError(f"{path} is an lm-eval group; give the YAML of one task")
    if not isinstance(cfg, dict) or not (cfg.get("task") or cfg.get("include")):
        raise SieveError(f"{path} is not an lm-eval task YAML (no 'task:' key)")
    name = cfg.get("task")
    if not isinstance(name, str):
        included = cfg.get("include")
        if isinstance(included, str):
            return _task_name((path.parent / included).resolve())
        raise SieveError(f"{path} is not an lm-eval task YAML with a 'task:' name")
    return name


def task_files(ref: TaskRef, base_dir: Path | None = None) -> dict[str, str]:
    """``{absolute path: digest}`` of every local file the task reads (empty for registered tasks)."""
    if ref.yaml is None:
        return {}
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    files: dict[str, str] = {}
    for path in _task_paths(ref.yaml, base, set()):
        files[str(path)] = file_digest(path) if path.is_file() else "missing"
    return dict(sorted(files.items()))


def _task_paths(yaml_path: Path, base: Path, seen: set[Path]) -> Iterator[Path]:
    yaml_path = yaml_path.resolve()
    if yaml_path in seen:
        return
    seen.add(yaml_path)
    yield yaml_path
    cfg = read_task_yaml(yaml_path, _FunctionTags)
    if not isinstance(cfg, dict):
        return
    included = cfg.get("include")
    if isinstance(included, str):
        yield from _task_paths(yaml_path.parent / included, base, seen)
    for value in _walk(cfg):
        if isinstance(value, tuple) and value[:1] == ("!function",):
            module = str(value[1]).rsplit(".", 1)[0]
            yield (yaml_path.parent / f"{module.replace('.', '/')}.py").resolve()
    data_files = (cfg.get("dataset_kwargs") or {}).get("data_files") if isinstance(cfg.get("dataset_kwargs"), dict) else None
    for entry in _walk(data_files):
        if isinstance(entry, str) and "://" not in entry:
            path = Path(entry).expanduser()
            yield (path if path.is_absolute() else base / path).resolve()


def _walk(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from _walk(v)
    else:
        yield value


@contextmanager
def working_directory(path: Path | None) -> Iterator[None]:
    """Run with ``path`` as the working directory (relative task data resolve there); ``None`` or a
    folder that does not exist here (another machine of a cluster): unchanged."""
    if path is None or not Path(path).is_dir():
        yield
        return
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)
