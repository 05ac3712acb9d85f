"""Packed rows against length buckets: the layout cost model, the rows' masks, and scores equal to one unpadded
forward per request."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sieve.errors import SieveError
from sieve.models.forward import forward_features, packed_mask, packed_positions
from sieve.scoring.buckets import bucket_bounds, pack_rows, pair_cost
from sieve.scoring.encode import EncodedTask
from sieve.scoring.plan import ScoringPlan, build_jobs

VOCAB = 300  # the conftest's tiny_lm


def task(seed: int, n: int, *, prefix: int, single_token: bool) -> EncodedTask:
    """``n`` examples after a shared ``prefix``-token prompt (0: none), suffixes of 1..30 tokens."""
    rng = np.random.default_rng(seed)
    shots = tuple(int(t) for t in rng.integers(2, VOCAB, prefix))
    contexts, conts = [], []
    for _ in range(n):
        contexts.append(shots + tuple(int(t) for t in rng.integers(2, VOCAB, int(rng.integers(1, 31)))))
        lens = [1, 1, 1] if single_token else [int(x) for x in rng.integers(1, 5, 3)]
        conts.append(tuple(tuple(int(t) for t in rng.integers(2, VOCAB, m)) for m in lens))
    return EncodedTask(tuple(contexts), tuple(conts), tuple(i % 3 for i in range(n)), 256)


def lpt_cost(lengths, n, fixed, pair, context, cap, lead) -> float | None:
    """Longest first onto the least-filled of ``n`` rows, written out plainly; the module's cost, or
    ``None`` where a row (its lead included) exceeds ``cap``."""
    loads = [lead] * n
    for length in sorted(lengths, reverse=True):
        loads[loads.index(min(loads))] += length
    return None if max(loads) > cap else sum(t + fixed + pair * t * (context + t) for t in loads)


def test_pack_rows_partitions_and_takes_the_cheapest_row_count() -> None:
    rng = np.random.default_rng(0)
    for trial in range(60):
        lengths = [int(x) for x in rng.integers(1, 80, int(rng.integers(1, 25)))]
        fixed, pair, context = float(rng.integers(0, 300)), float(rng.choice([0.0, 1e-4, 3e-3])), int(rng.integers(0, 20))
        lead = int(rng.choice([0, 0, 12]))
        cap = int(rng.integers(max(lengths), 2 * sum(lengths) + 1)) + lead
        packing = pack_rows(lengths, fixed, pair, context, max_tokens=cap, lead=lead)
        members = sorted(i for row in packing.rows for i in row)
        assert members == list(range(len(lengths))), trial
        loads = [lead + sum(lengths[i] for i in row) for row in packing.rows]
        assert max(loads) <= cap and max(loads) - min(loads) <= max(lengths)
        assert all(list(row) == sorted(row) for row in packing.rows)
        assert packing.cost == pytest.approx(sum(t + fixed + pair * t * (context + t) for t in loads))
        costs = [lpt_cost(lengths, n, fixed, pair, context, cap, lead) for n in range(1, len(lengths) + 1)]
        assert packing.cost == pytest.approx(min(c for c in costs if c is not None)), trial
    assert pack_rows([], 10, 0.1).rows == ()


def test_pair_cost_weighs_attention_by_the_config(tiny_lm) -> None:
    model = tiny_lm("llama")
    params = sum(p.numel() for p in model.parameters())
    assert pair_cost(model) == pytest.approx(2 * 32 * 2 / params)
    assert pair_cost(tiny_lm("gpt2")) == pytest.approx(2 * 32 * 2 / sum(p.numel() for p in tiny_lm("gpt2").parameters()))


def test_packed_mask_lets_each_token_see_the_context_and_its_own_past() -> None:
    mask = packed_mask([2, 3], torch.tensor([0, 1, 1]), torch.float32)[0, 0]
    seen = (mask == 0).int().tolist()
    assert seen == [[0, 1, 1, 1, 0, 0, 0, 0],
                    [0, 1, 1, 1, 1, 0, 0, 0],
                    [0, 1, 1, 0, 0, 1, 0, 0],
                    [0, 1, 1, 0, 0, 1, 1, 0],
                    [0, 1, 1, 0, 0, 1, 1, 1]]
    assert float(mask.min()) == torch.finfo(torch.float32).min
    assert packed_positions([2, 3], 5).tolist() == [[5, 6, 5, 6, 7]]
    lead = packed_mask([1, 2], torch.zeros(0), torch.float32, lead=2)[0, 0]  # the prefix inside the row
    assert (lead == 0).int().tolist() == [[1, 0, 0, 0, 0],
                                         [1, 1, 0, 0, 0],
                                         [1, 1, 1, 0, 0],
                                         [1, 1, 0, 1, 0],
                                         [1, 1, 0, 1, 1]]
    assert packed_positions([1, 2], 2, lead=2).tolist() == [[0, 1, 2, 2, 3]]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("prefix", [0, 20], ids=["no-prefix", "shared-prefix"])
@pytest.mark.parametrize("single_token", [True, False], ids=["fast-path", "slow-path"])
def test_packed_rows_score_like_one_unpadded_forward_per_request(family, prefix, single_token, naive_scores,
                                                                  tiny_lm) -> None:
    """Rows of one sequence each (``batch_size=1`` caps a row at the longest), a few rows, one row; a
    shared prefix read from its cache by many rows, inside the one row where that saves a forward."""
    model, encoded = tiny_lm(family), task(1, 14, prefix=prefix, single_token=single_token)
    assert forward_features(model).packed_rows
    reference = np.concatenate(naive_scores(model, encoded))
    buckets = ScoringPlan.build(model, encoded, batch_size=4, forward_cost=8, packing=False)
    assert (buckets.prefix is not None) == (prefix > 0)
    shared = buckets.prefix["input_ids"].shape[1] - 1 if prefix else 0  # the prefix, less its pad column
    for batch_size, forward_cost in ((1, 8), (4, 8), (14, 1024)):
        plan = ScoringPlan.build(model, encoded, batch_size=batch_size, forward_cost=forward_cost, packing=True)
        inline = prefix > 0 and plan.prefix is None
        if prefix:
            assert inline == (batch_size == 14)
        for batch in plan.batches:
            ids, mask = batch.kwargs["input_ids"], batch.kwargs["attention_mask"]
            assert ids.shape[0] == 1 and mask.dim() == 4 and mask.shape[2] == ids.shape[1]
        run = sum(b.kwargs["input_ids"].numel() for b in plan.batches)
        run += shared if plan.prefix is not None else -shared * (len(plan.batches) - 1) if inline else 0
        assert run == plan.n_tokens == buckets.n_tokens  # nothing padded; the prefix counted once
        got = np.concatenate(plan.score(model)[0].logprobs)
        np.testing.assert_allclose(got, reference, rtol=0, atol=1e-5)


def test_auto_packs_where_the_cost_model_says_it_is_cheaper(tiny_lm) -> None:
    """Equal lengths leave no padding to save (buckets win: packing only adds attention); very uneven
    lengths with a costly forward pack; no cost model (``forward_cost=None``) or ``packing=False``:
    buckets. Whichever wins, the scores are the same."""
    model = tiny_lm("llama")
    even = EncodedTask(tuple(tuple(range(2 + i, 22 + i)) for i in range(8)), ((((5,), (6,)),) * 8), (0,) * 8, 256)
    uneven = EncodedTask(tuple(tuple(range(2, 3 + (60 if i == 0 else i))) for i in range(8)),
                         ((((5,), (6,)),) * 8), (0,) * 8, 256)

    def packed(encoded, **kwargs):
        plan = ScoringPlan.build(model, encoded, batch_size=8, **kwargs)
        return all(b.kwargs["attention_mask"].dim() == 4 for b in plan.batches), plan

    assert not packed(even, forward_cost=1024)[0]
    assert packed(uneven, forward_cost=1024)[0]
    assert not packed(uneven, forward_cost=None)[0] and not packed(uneven, forward_cost=1024, packing=False)[0]
    lengths = sorted((len(j.tokens) for j in build_jobs(uneven, range(8))), reverse=True)
    pair = pair_cost(model)
    assert pack_rows(lengths, 1024, pair).cost < sum((b - a) * lengths[a] * (1 + pair * lengths[a]) + 1024
                                                      for a, b in bucket_bounds(lengths, 8, 1024))
    a = packed(uneven, forward_cost=1024)[1].score(model)[0]
    b = packed(uneven, forward_cost=1024, packing=False)[1].score(model)[0]
    np.testing.assert_allclose(np.concatenate(a.logprobs), np.concatenate(b.logprobs), rtol=0, atol=1e-5)


class _Flat(torch.nn.Module):
    """A model that drops any 4-D attention mask (as a forward that only knows 2-D masks might): a
    packed row then attends across its sequences, which the probe must catch."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.dim() == 4:
            attention_mask = None
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def test_a_model_without_packed_rows_keeps_buckets_and_refuses_forced_packing(caplog, naive_scores, tiny_lm) -> None:
    model, encoded = _Flat(tiny_lm("llama")), task(2, 6, prefix=20, single_token=True)
    with caplog.at_level("WARNING", logger="sieve.models.forward"):
        features = forward_features(model)
    assert features.cache_argument and features.position_ids and not features.packed_rows
    assert sum("packed rows" in r.message for r in caplog.records) == 1
    with pytest.raises(SieveError, match="packed rows: its forward does not honour a 4-D attention mask"):
        ScoringPlan.build(model, encoded, packing=True)
    plan = ScoringPlan.build(model, encoded, forward_cost=1024)
    assert all(b.kwargs["attention_mask"].dim() == 2 for b in plan.batches)
    np.testing.assert_allclose(np.concatenate(plan.score(model)[0].logprobs),
                               np.concatenate(naive_scores(model, encoded)), rtol=0, atol=1e-5)
