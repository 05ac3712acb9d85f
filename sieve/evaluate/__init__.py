"""``sieve eval``: a model, a run or an allocation file measured on the task's test split, general
perplexity, and optionally lm-eval's ``simple_evaluate`` on the same in-memory model."""
