"""Measuring a model: task log-likelihoods (token-for-token like lm-eval's HFLM), perplexity on
general text, and the held-out quality report. Shared by the search's fitness and ``sieve eval``."""
