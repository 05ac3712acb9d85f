"""Importance scores: one module per method, one registry.

``get_method("wanda", source="task")`` builds a :class:`~sieve.scores.base.ScoringMethod`. A new
method is one new module that subclasses it and decorates the class with :func:`register_method`,
plus an import line below.
"""

from sieve.scores.base import ScoringMethod, available_methods, get_method, register_method
from sieve.scores import fused, magnitude, sparsegpt, wanda  # noqa: F401  (registration)

__all__ = ["ScoringMethod", "available_methods", "get_method", "register_method"]
