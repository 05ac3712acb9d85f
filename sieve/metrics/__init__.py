"""Measuring a model on top of :mod:`sieve.scoring`: the search's task scorer (plans replayed as CUDA
graphs), perplexity on general text, and the held-out quality report. Shared by the search's fitness
and ``sieve eval``."""
