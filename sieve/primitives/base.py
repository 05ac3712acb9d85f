"""The primitive interface: *how* a matrix gives up parameters, and its registry.

A primitive turns one matrix and a level into a reduced matrix: ``mask`` zeroes weights chosen by
a scoring method (unstructured or N:M), and further primitives (low-rank factors) plug in as one
new file here. Each primitive is a pydantic model that owns and validates its own parameters.
"""

from __future__ import annotations

from abc import ABC

from sieve.config import Frozen
from sieve.registry import Registry


class Primitive(Frozen, ABC):
    name: str


PRIMITIVES: Registry[Primitive] = Registry("pruning primitive", "sieve.primitives")
PrimitiveSpec = PRIMITIVES.field(Primitive)
