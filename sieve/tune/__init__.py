"""``sieve tune``: LoRA tuning of a pruned model that keeps the structure the search chose.

A pruned model (a search run, realised exactly as ``sieve export --to hf`` would, or an exported
folder) is tuned on the task's *calibration / training* split with LoRA adapters (peft) and merged
back into the same structure:

* zeros stay zero — the adapters of a matrix with zeros are masked,
  ``W_eff = M ⊙ (W + B·A·α/r)`` with ``M = (W ≠ 0)``, in the forward and in the merge
  (:mod:`sieve.tune.masked_lora`; SQFT's SparsePEFT);
* factorised matrices (:class:`~sieve.models.factorized.FactorizedLinear`) get one adapter on each
  of their two Linear parts, merged into the same parts: the ranks do not grow;
* removed decoder blocks stay removed: the model is tuned with the blocks it has.

The validation split picks the best step (step 0, the untuned model, included); the test split is
never read. Modules: :mod:`~sieve.tune.config` (the one frozen config), :mod:`~sieve.tune.masked_lora`,
:mod:`~sieve.tune.base` (what is tuned), :mod:`~sieve.tune.data` (batches), :mod:`~sieve.tune.loss`,
:mod:`~sieve.tune.checkpoint`, :mod:`~sieve.tune.outdir` (the output folder's layout and lock),
:mod:`~sieve.tune.trainer` (the loop), :mod:`~sieve.tune.run` (prepare, train, export),
:mod:`~sieve.tune.evaluate` / :mod:`~sieve.tune.report` (before / after rows), :mod:`~sieve.tune.command`.
"""
