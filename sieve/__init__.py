"""sieve: how many parameters does my task really need?

sieve prunes a Hugging Face causal LM for one task. It collects calibration statistics on general
text and on the task, fuses them into task-aware importance scores, and searches per-matrix
sparsity levels under an exact global budget.

Pipeline (one sub-package per stage): ``data`` → ``stats`` → ``scores`` → ``prune`` → ``search``
→ ``evaluate`` → ``export``; ``cli`` is a thin Typer layer on top.

Glossary
--------
matrix
    A prunable weight: the 2-D weight of a Linear (or GPT-2 Conv1D) inside a decoder block,
    named by its full module name (``model.layers.3.mlp.up_proj``). Always viewed as
    ``(out_features, in_features)``; one output row is one comparison group.
sparsity
    Always a fraction in ``[0, 1)``: the share of a matrix's (or the model's prunable) weights
    that are zero. Never a percentage.
allocation
    A mapping matrix name → sparsity, or rank for factorised matrices
    (:class:`sieve.prune.allocation.Allocation`). The one object passed between prune, search and export.
rank
    The number of components a factorised matrix keeps: ``W ≈ A B`` with ``A`` out × r, ``B`` r × in
    (:mod:`sieve.primitives.lowrank`); it really removes ``out·in − r·(out+in)`` parameters.
budget
    The global sparsity target: the parameter-weighted fraction of all prunable weights removed.
level
    A search gene's integer value; one level step removes a fixed number of weights, the same for
    every matrix, so moving one level from one gene to another keeps the budget exact.
candidate
    One genome (vector of levels) proposed by the search and evaluated on the task.
generation
    One ask → evaluate → tell round of the genetic algorithm; checkpoints are written after each.
"""

__version__ = "0.1.0"


def load_pretrained(path, **kwargs):
    """Load a folder written by ``sieve export --to hf`` (or ``sieve prune``): a plain transformers
    model, or — for a low-rank / mixed allocation — one whose factorised matrices are
    :class:`~sieve.models.factorized.FactorizedLinear` modules (really smaller and faster). Works
    with ``generate``, lm-eval's ``HFLM`` and peft (``target_modules="all-linear"``)."""
    from sieve.models.factorized import load_pretrained as load

    return load(path, **kwargs)
