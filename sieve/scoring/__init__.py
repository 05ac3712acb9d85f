"""Fast batched log-likelihood scoring of task examples, token-for-token like lm-eval's HFLM.

lm-eval's ``HFLM.loglikelihood`` re-tokenises every request on every call, which is far too slow to
run once per search candidate. sieve tokenises a task once (:mod:`.encode`), cuts its sequences into
forwards by a cost model (:mod:`.buckets`), builds the forwards' inputs once (:mod:`.plan`) and reads
per-choice scores and their metrics back (:mod:`.results`). The measurements built on it (the
search's scorer, the quality report) are in :mod:`sieve.metrics`."""
