"""The built-in coder task ``python_names``: masking, grouped split, licence check, the real task."""

from __future__ import annotations

import ast
import importlib.metadata
import json
from pathlib import Path

import pytest

from sieve.data import python_names
from sieve.data.python_names import (
    MASK,
    Function,
    collect_functions,
    functions_in,
    materialize_python_names,
    split_python_names,
)
from sieve.data.splits import load_task
from sieve.errors import SieveError

MODULE = '''
class Poly:
    @property
    def degree_sum(self):
        """Sum of degrees."""
        total = 0
        for d in self.degrees:
            total += d
        return total

    def _private(self):
        return 1
        return 2

    def shift(self, n):
        if n == 0:
            return self
        return self.shift(n - 1).bump()

def one(x):
    return x
'''


def test_functions_are_masked_without_docstring_or_decorators() -> None:
    found = {f.name: f.code for f in functions_in(MODULE, "poly.py")}
    assert set(found) == {"degree_sum", "shift"}  # private, one-line and short-named ones dropped
    assert found["degree_sum"] == ("def ___(self):\n    total = 0\n    for d in self.degrees:\n"
                                   "        total += d\n    return total")
    assert "shift" not in found["shift"] and found["shift"].count(MASK) == 2  # recursive call masked too
    ast.parse(found["shift"])  # still Python


def _functions(n_names: int, per_name: int = 2) -> list[Function]:
    return [Function(f"name_{i}", f"mod{i % 7}.py", f"def ___(x):\n    y = x + {i}\n    return y * {k}")
            for i in range(n_names) for k in range(per_name)]


def test_split_is_grouped_by_name_deterministic_and_has_valid_choices() -> None:
    parts = split_python_names(_functions(200), test_size=60, validation_size=40)
    assert len(parts["test"]) == 60 and len(parts["validation"]) == 40 and len(parts["train"]) == 300
    answers = {role: {d["choices"][d["label"]] for d in docs} for role, docs in parts.items()}
    assert not answers["test"] & answers["train"] and not answers["test"] & answers["validation"]
    assert not answers["validation"] & answers["train"]
    for docs in parts.values():
        for d in docs:
            assert len(d["choices"]) == len(set(d["choices"])) == 4 and 0 <= d["label"] < 4
            assert d["code"].startswith("def ___(")
    labels = [d["label"] for d in parts["test"]]
    assert len(set(labels)) == 4  # the answer's position is shuffled
    assert split_python_names(list(reversed(_functions(200))), test_size=60, validation_size=40) == parts
    with pytest.raises(SieveError, match="only 20 functions"):
        split_python_names(_functions(10), test_size=60, validation_size=40)


def test_collect_skips_tests_and_duplicates(tmp_path: Path) -> None:
    (tmp_path / "pkg" / "tests").mkdir(parents=True)
    (tmp_path / "pkg" / "a.py").write_text(MODULE)
    (tmp_path / "pkg" / "b.py").write_text(MODULE)  # identical bodies: kept once
    (tmp_path / "pkg" / "tests" / "test_a.py").write_text(MODULE.replace("shift", "test_shift"))
    assert [f.name for f in collect_functions(tmp_path / "pkg")] == ["degree_sum", "shift"]


def test_a_source_without_an_allowed_licence_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.metadata

    def metadata(name: str):
        meta = real(name)
        if name == python_names.PN_SOURCE:
            del meta["License"]
            meta["License"] = "Proprietary"
        return meta

    monkeypatch.setattr(importlib.metadata, "metadata", metadata)
    with pytest.raises(SieveError, match="declares licence 'Proprietary'"):
        python_names.source_root()


def document(context: str) -> str:
    """The document of a prompt: what follows the last shot's answer line."""
    return context.rsplit("above is named: ", 1)[1].split("\n", 1)[1].removeprefix("\n")


def test_real_task_materialises_and_loads(sieve_cache: Path) -> None:
    path = materialize_python_names()
    data = path.parent
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["source"] == f"sympy=={importlib.metadata.version('sympy')} (BSD)"
    assert manifest["sizes"]["test"] == 1000 and manifest["sizes"]["validation"] == 500
    assert manifest["sizes"]["train"] > 1500
    task = load_task("python_names")
    assert task.output_type == "multiple_choice"
    ex = task.test[0]
    assert ex.context.count("# The function ___ above is named:") == 3  # two shots + the document
    assert len(ex.continuations) == 4 and all(c.startswith(" ") and not c.startswith("  ") for c in ex.continuations)
    assert document(ex.context).startswith("def ___(")
    assert ex.continuations[ex.gold].strip() not in document(ex.context)
    codes = {role: {document(e.context) for e in getattr(task, role)}
             for role in ("calibration", "validation", "test")}
    assert len(codes["test"]) == len(task.test)
    assert not codes["test"] & codes["validation"] and not codes["test"] & codes["calibration"]
    stamps = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    assert materialize_python_names() == path  # reused, not rebuilt
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == stamps
