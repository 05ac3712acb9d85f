"""Importance scores: one module per method, one registry (:data:`sieve.scores.base.SCORES`).

A new method is one new module in this package: a subclass of
:class:`~sieve.scores.base.ScoringMethod` decorated with ``@SCORES.register``.
"""

from sieve.scores.base import SCORES, MethodSpec, OneSource, ScoringMethod, get_method

__all__ = ["SCORES", "MethodSpec", "OneSource", "ScoringMethod", "get_method"]
