"""Architecture adapters: one file per family, one registry (:mod:`sieve.models.adapters.base`)."""

from sieve.models.adapters.base import ADAPTERS, Adapter, adapter_for, find_matrices

__all__ = ["ADAPTERS", "Adapter", "adapter_for", "find_matrices"]
