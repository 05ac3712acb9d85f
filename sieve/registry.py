"""One generic registry for every pluggable concept (scores, primitives, fitness, exporters,
architecture adapters), in the spirit of lm-eval's ``lm_eval/api/registry.py``.

A registry maps a name to a class. Registering a name twice raises (a silent overwrite would make
the last-imported plugin win). Entries are discovered by importing every module of the registry's
package on first use, so a new score is one new file with one ``@SCORES.register`` line — nothing
else lists it.

For pydantic plugins (a method that owns its parameters), :meth:`Registry.build` turns a spec — a
name, or a mapping with a ``name`` key plus the plugin's own fields — into a validated instance, and
:meth:`Registry.field` is the matching pydantic field type for configs.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BeforeValidator, SerializeAsAny, ValidationError

from sieve.config import one_line
from sieve.errors import SieveError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → class for one kind of plugin; ``package`` holds the plugins (imported on first use)."""

    def __init__(self, kind: str, package: str | None = None) -> None:
        self.kind = kind
        self.package = package
        self._entries: dict[str, type[T]] = {}
        self._discovered = package is None

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator; the name is the class's ``name`` (a ClassVar or a pydantic field default)."""
        name = _name_of(cls)
        if name in self._entries and self._entries[name] is not cls:
            raise ValueError(f"{self.kind} {name!r} is registered twice: {self._entries[name].__module__} and {cls.__module__}")
        self._entries[name] = cls
        return cls

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str) -> type[T]:
        self._discover()
        if name not in self._entries:
            raise SieveError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}")
        return self._entries[name]

    def build(self, spec: Any) -> T:
        """An instance from ``"name"``, ``{"name": ..., **fields}`` or an instance (returned as is)."""
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, Mapping):
            for cls in self._entries.values():
                if isinstance(spec, cls):
                    return spec
            raise ValueError(f"a {self.kind} must be a name or a mapping with a 'name' key, got {spec!r}")
        name = spec.get("name")
        if not isinstance(name, str):
            raise ValueError(f"a {self.kind} needs a 'name' (one of {', '.join(self.names())})")
        self._discover()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}")
        try:
            return self._entries[name].model_validate(dict(spec))  # type: ignore[attr-defined]
        except ValidationError as exc:
            raise ValueError(one_line(exc, name)) from None

    def field(self, base: type) -> Any:
        """Pydantic field type: validated through :meth:`build`, dumped with the subclass's fields."""
        return Annotated[SerializeAsAny[base], BeforeValidator(self.build)]


def _name_of(cls: type) -> str:
    fields = getattr(cls, "model_fields", None)
    if fields and "name" in fields and isinstance(fields["name"].default, str):
        return fields["name"].default
    name = getattr(cls, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"{cls.__name__} has no string 'name' to register under")
    return name

