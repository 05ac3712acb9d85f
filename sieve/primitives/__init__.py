"""Pruning primitives: pure ``(scores, level) -> mask`` (and later ``-> factors``) functions, one
module per primitive, one registry (:mod:`sieve.primitives.base`)."""
