"""The built-in task ``python_names``: name a Python function from its code (4 choices).

Method-name prediction is a standard code-understanding task (code2seq's "method naming"); here it
is a log-likelihood multiple choice, so the search's fitness is exact like Rotten Tomatoes'. The
functions come from the source of the ``sympy`` package (BSD-3-Clause; pinned in the lock, as a
dependency of torch): every public function or method outside its ``tests`` / ``benchmarks``
folders whose body, docstring removed, is 2–10 lines and at most :data:`PN_MAX_CHARS` characters.

A document shows the function with its name replaced by ``___`` everywhere (recursive calls
included) and no docstring or decorators; the choices are the true name and three names of other
functions, from the same file where it has enough, so the distractors read like the answer::

    def ___(self, other):
        return self.func(*[a.subs(other) for a in self.args])
    # The function ___ above is named: <name>

The split is grouped by name: every function of one name lands in one split, so a test name is
never a training or validation answer, and identical masked bodies are kept once. Names are sorted,
permuted with ``default_rng(PN_SPLIT_SEED)`` and dealt into test, validation and train until each
reaches its size. Two short train functions are moved to the front as the few-shot examples.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sieve.data.builtin_task import materialize
from sieve.errors import SieveError
from sieve.resources import package_file

# Bump PN_VERSION whenever the output would change for the same source.
PN_VERSION = 1
PN_SPLIT_SEED = 4321
PN_TEST_SIZE = 1000
PN_VALIDATION_SIZE = 500
PN_CHOICES = 4
PN_MIN_LINES, PN_MAX_LINES = 2, 10
PN_MAX_CHARS = 360
PN_SHOTS = 2
PN_SOURCE = "sympy"
#: Licences the source package may carry (its metadata is checked before any of it is used).
PN_LICENCES = ("BSD", "BSD-3-Clause", "MIT", "Apache-2.0", "PSF-2.0")
MASK = "___"


@dataclass(frozen=True)
class Function:
    """One candidate function: its name, the file it came from and its masked source."""

    name: str
    file: str
    code: str


def _body_without_docstring(node: ast.FunctionDef) -> list[ast.stmt]:
    body = list(node.body)
    first = body[0] if body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        body = body[1:]
    return body


def masked_function(lines: list[str], node: ast.FunctionDef) -> str | None:
    """The function's source without decorators or docstring, its name replaced by :data:`MASK`;
    ``None`` when its body is outside the size limits."""
    body = _body_without_docstring(node)
    if not body:
        return None
    n_body = body[-1].end_lineno - body[0].lineno + 1
    if not PN_MIN_LINES <= n_body <= PN_MAX_LINES:
        return None
    header = lines[node.lineno - 1: node.body[0].lineno - 1]  # the signature, up to the docstring or body
    code = textwrap.dedent("".join(header + lines[body[0].lineno - 1: body[-1].end_lineno])).rstrip()
    if not code.startswith(("def ", "async def ")) or len(code) > PN_MAX_CHARS:
        return None
    return re.sub(rf"\b{re.escape(node.name)}\b", MASK, code)


def functions_in(source: str, file: str) -> Iterator[Function]:
    """Every usable public function or method of one module's ``source``."""
    lines = source.splitlines(keepends=True)
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") and len(node.name) > 2:
            code = masked_function(lines, node)
            if code is not None:
                yield Function(node.name, file, code)


def _source_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if not {"tests", "benchmarks"} & set(p.relative_to(root).parts))


def collect_functions(root: Path) -> list[Function]:
    """Functions of every module under ``root``, in path order, identical masked bodies once."""
    seen: set[str] = set()
    out = []
    for path in _source_files(root):
        for fn in functions_in(path.read_text(encoding="utf-8"), path.relative_to(root).as_posix()):
            if fn.code not in seen:
                seen.add(fn.code)
                out.append(fn)
    return out


def split_python_names(
    functions: Iterable[Function],
    *,
    test_size: int = PN_TEST_SIZE,
    validation_size: int = PN_VALIDATION_SIZE,
    seed: int = PN_SPLIT_SEED,
) -> dict[str, list[dict]]:
    """Grouped-by-name train / validation / test documents (see the module docstring)."""
    by_name: dict[str, list[Function]] = {}
    for fn in functions:
        by_name.setdefault(fn.name, []).append(fn)
    names = sorted(by_name)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    groups: dict[str, list[Function]] = {"test": [], "validation": [], "train": []}
    sizes = {"test": test_size, "validation": validation_size}
    for name in order:
        role = next((r for r in ("test", "validation") if len(groups[r]) < sizes[r]), "train")
        groups[role].extend(sorted(by_name[name], key=lambda f: (f.file, f.code)))
    if len(groups["train"]) < max(PN_SHOTS, PN_CHOICES) or len(groups["test"]) < test_size:
        raise SieveError(f"python_names: only {sum(len(g) for g in groups.values())} functions; "
                         f"need more than {test_size + validation_size}")
    rng = np.random.default_rng(seed + 1)
    parts = {}
    for role, fns in groups.items():
        names = sorted({f.name for f in fns})
        per_file: dict[str, set[str]] = {}
        for f in fns:
            per_file.setdefault(f.file, set()).add(f.name)
        parts[role] = [_document(fn, names, sorted(per_file[fn.file]), rng) for fn in fns]
    train = parts["train"]
    shots = sorted(range(min(50, len(train))), key=lambda i: (len(train[i]["code"]), i))[:PN_SHOTS]
    parts["train"] = [train[i] for i in shots] + [d for i, d in enumerate(train) if i not in shots]
    return parts


def _document(fn: Function, names: list[str], file_names: list[str], rng: np.random.Generator) -> dict:
    """``{"code", "choices", "label"}``: the true name and three distractors drawn from the split's
    ``names`` (sorted), those of the function's own file (``file_names``, sorted) first."""
    others = [n for n in names if n != fn.name]
    same_file = [n for n in file_names if n != fn.name]
    need = PN_CHOICES - 1
    picked = [same_file[i] for i in rng.permutation(len(same_file))[:need]] if same_file else []
    rest = [n for n in others if n not in picked]
    picked += [rest[i] for i in rng.permutation(len(rest))[: need - len(picked)]]
    choices = picked + [fn.name]
    order = rng.permutation(len(choices))
    choices = [choices[i] for i in order]
    return {"code": fn.code, "choices": choices, "label": choices.index(fn.name), "file": fn.file}


def source_root() -> tuple[Path, str]:
    """The source package's folder and its ``name==version``, after its licence is checked."""
    root = package_file(PN_SOURCE, "__init__.py", pip_name=PN_SOURCE).parent
    meta = importlib.metadata.metadata(PN_SOURCE)
    licence = meta.get("License-Expression") or meta.get("License") or ""
    if licence.strip() not in PN_LICENCES:
        raise SieveError(f"python_names: {PN_SOURCE} {meta.get('Version')} declares licence {licence!r}, "
                         f"not one of {', '.join(PN_LICENCES)}; its code is not used")
    return root, f"{PN_SOURCE}=={meta.get('Version')} ({licence.strip()})"


def materialize_python_names(directory: Path | None = None) -> Path:
    """Write the JSONL splits and the runnable YAML once (:func:`~sieve.data.builtin_task.materialize`)."""
    root, source = source_root()
    key = {"version": PN_VERSION, "source": source, "split_seed": PN_SPLIT_SEED}
    return materialize("python_names", key, lambda: split_python_names(collect_functions(root)), directory)
