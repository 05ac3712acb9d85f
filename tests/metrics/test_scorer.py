"""Scoring plans (length buckets, one shared prefix per run) and the search's TaskScorer, whose CUDA
graphs are exercised on a GPU (``pytest tests/metrics/test_scorer.py`` on the device)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sieve.metrics.scorer import TaskScorer
from sieve.models.adapters import find_matrices
from sieve.models.batched import CandidateModel
from sieve.scoring.buckets import bucket_bounds
from sieve.scoring.encode import EncodedTask
from sieve.scoring.plan import ScoringPlan, score_examples

VOCAB = 300
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


def llama(seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    return LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def few_shot(n: int, seed: int = 0, prefix: int = 24, single_token: bool = True) -> EncodedTask:
    """``n`` examples sharing a ``prefix``-token prompt, suffixes of 1..30 tokens."""
    rng = np.random.default_rng(seed)
    shots = tuple(int(t) for t in rng.integers(2, VOCAB, prefix))
    contexts, conts, golds = [], [], []
    for _ in range(n):
        contexts.append(shots + tuple(int(t) for t in rng.integers(2, VOCAB, int(rng.integers(1, 31)))))
        lens = [1, 1] if single_token else [int(x) for x in rng.integers(1, 4, 2)]
        conts.append(tuple(tuple(int(t) for t in rng.integers(2, VOCAB, m)) for m in lens))
        golds.append(int(rng.integers(0, 2)))
    return EncodedTask(tuple(contexts), tuple(conts), tuple(golds), 256)


def _variants(model, n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``n`` weight sets of the model's matrices: each a random half of every matrix zeroed."""
    g = torch.Generator().manual_seed(seed)
    return [{m.name: m.weight * (torch.rand(m.weight.shape, generator=g) > 0.5) for m in find_matrices(model)}
            for _ in range(n)]


def _logprobs(scores) -> np.ndarray:
    return np.concatenate(scores.logprobs)


@pytest.mark.parametrize("packing", [False, True], ids=["buckets", "packed"])
def test_copies_score_their_own_candidates(packing: bool) -> None:
    """A plan of ``copies`` through a model holding several candidates' weights
    (:mod:`sieve.models.batched`; the shared prefix cache, left padding, several buckets or packed
    rows): copy ``c`` gets candidate ``c``'s scores, those of the model holding its weights alone up
    to rounding, and the same bits wherever the candidate sits in the forward."""
    model, encoded = llama(), few_shot(10)
    matrices = find_matrices(model)
    variants = _variants(model, 3)
    alone = []
    dense = {m.name: m.weight.clone() for m in matrices}
    single = ScoringPlan.build(model, encoded, batch_size=4, forward_cost=8, packing=packing)
    assert single.prefix is not None and len(single.batches) > 1  # the prefix cache and several forwards
    assert all((b.kwargs["attention_mask"].dim() == 4) == packing for b in single.batches)
    for weights in variants:
        with torch.no_grad():
            for m in matrices:
                m.weight.copy_(weights[m.name])
        alone.append(_logprobs(single.score(model)[0]))
    with torch.no_grad():
        for m in matrices:
            m.weight.copy_(dense[m.name])

    def stacked(order):
        return {m.name: torch.stack([variants[i][m.name] for i in order]) for m in matrices}

    plan = ScoringPlan.build(model, encoded, batch_size=4, forward_cost=8, copies=3, packing=packing)
    swapped = CandidateModel(model, matrices, stacked([0, 1, 2]))
    swapped.count.value = 3
    together = [_logprobs(s) for s in plan.score(model)]
    for weights in (stacked([2, 0, 1]),):
        for name, tensor in weights.items():
            model.get_submodule(name).weights.copy_(tensor)
    rotated = [_logprobs(s) for s in plan.score(model)]
    swapped.restore()
    assert all(type(model.get_submodule(m.name)) is torch.nn.Linear for m in matrices)
    for c in range(3):
        np.testing.assert_allclose(together[c], alone[c], rtol=1e-5, atol=1e-6)
    assert not np.allclose(alone[0], alone[1])
    for c, was in enumerate([2, 0, 1]):  # the same candidate elsewhere in the forward: the same bits
        np.testing.assert_array_equal(rotated[c], together[was])
    np.testing.assert_array_equal(_logprobs(single.score(model)[0]), _logprobs(ScoringPlan.build(
        model, encoded, batch_size=4, forward_cost=8, packing=packing).score(model)[0]))


def padded(lengths, bounds, cost):
    return sum((stop - start) * lengths[start] + cost for start, stop in bounds)


def test_bucket_bounds_are_the_cheapest_partition() -> None:
    """Exact against brute force over every cut of small inputs; capped at ``batch_size`` rows."""
    rng = np.random.default_rng(0)
    for trial in range(40):
        n, batch, cost = int(rng.integers(1, 9)), int(rng.integers(1, 5)), int(rng.integers(0, 40))
        lengths = sorted((int(x) for x in rng.integers(1, 60, n)), reverse=True)
        bounds = bucket_bounds(lengths, batch, cost)
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(0 < stop - start <= batch for start, stop in bounds)
        best = min(
            padded(lengths, list(zip((0, *cuts), (*cuts, n))), cost)
            for k in range(n) for cuts in itertools.combinations(range(1, n), k)
            if all(0 < b - a <= batch for a, b in zip((0, *cuts), (*cuts, n)))
        )
        assert padded(lengths, bounds, cost) == best, trial
    assert bucket_bounds([5, 4, 3, 2, 1], 2, None) == [(0, 2), (2, 4), (4, 5)]
    with pytest.raises(ValueError, match="sorted"):
        bucket_bounds([1, 2], 4)


def test_buckets_cut_padding_and_keep_scores(naive_scores) -> None:
    model, encoded = llama(), few_shot(40)
    one = ScoringPlan.build(model, encoded, batch_size=40, forward_cost=None)
    buckets = ScoringPlan.build(model, encoded, batch_size=40, forward_cost=16, packing=False)
    assert len(one.batches) == 1 and len(buckets.batches) > 1

    def padded_tokens(plan):
        return sum(b.kwargs["input_ids"].numel() for b in plan.batches)

    assert padded_tokens(buckets) < padded_tokens(one)
    assert buckets.n_tokens == one.n_tokens == 24 + sum(len(c) - 24 for c in encoded.contexts)  # prefix once
    reference = naive_scores(model, encoded)
    for plan in (one, buckets):
        np.testing.assert_allclose(np.concatenate(plan.score(model)[0].logprobs), np.concatenate(reference), atol=1e-5)


def test_shared_prefix_runs_once_per_scoring_run() -> None:
    """The prefix is one forward of one row per run, however many batches use it."""
    model, encoded = llama(), few_shot(12, single_token=False)
    plan = ScoringPlan.build(model, encoded, batch_size=4, forward_cost=None)
    assert plan.prefix is not None and 17 <= plan.prefix["input_ids"].shape[1] <= 25  # a pad + the prefix
    assert len(plan.batches) == 6 and all(b.shared for b in plan.batches)
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs["input_ids"].shape),
                                           with_kwargs=True)
    try:
        first = plan.score(model)[0]
    finally:
        hook.remove()
    assert calls[0] == plan.prefix["input_ids"].shape and len(calls) == 7
    second = plan.score(model)[0]
    for a, b in zip(first.logprobs, second.logprobs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_task_scorer_caches_one_plan_per_subset_and_needs_a_gpu_for_graphs() -> None:
    model, encoded = llama(), few_shot(20)
    scorer = TaskScorer(encoded, 8, cuda_graphs=True)
    got = scorer.score(model, [3, 1, 7])
    plan = scorer.plans[((3, 1, 7), 1)]
    assert scorer.score(model, [3, 1, 7]).logprobs[0][0] == got.logprobs[0][0]
    assert scorer.plans[((3, 1, 7), 1)] is plan and len(scorer.plans) == 1
    assert scorer.replays == scorer.captures == 0  # CPU: eager
    want = score_examples(model, encoded, indices=[3, 1, 7], batch_size=8)
    for a, b in zip(got.logprobs, want.logprobs, strict=True):
        np.testing.assert_array_equal(a, b)


@cuda
@pytest.mark.parametrize("packing", [False, True], ids=["buckets", "packed"])
@pytest.mark.parametrize("single_token", [True, False], ids=["fast-path", "slow-path"])
def test_cuda_graph_replays_follow_in_place_weight_changes(single_token: bool, packing: bool) -> None:
    """One capture per subset; each replay scores the weights as they are now (written in place, as
    the in-place pruner does), equal to eager scoring bit for bit, with length buckets or packed rows."""
    device = torch.device("cuda")
    model, encoded = llama(device="cuda"), few_shot(48, single_token=single_token)
    graphs = TaskScorer(encoded, 16, cuda_graphs=True, packing=packing)
    eager = TaskScorer(encoded, 16, cuda_graphs=False, packing=packing)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m.weight.shape[0] < VOCAB]
    dense = [w.detach().clone() for w in weights]
    generator = torch.Generator(device).manual_seed(0)
    subsets = [list(range(0, 48, 3)), list(range(48))]
    for step in range(4):
        for w, d in zip(weights, dense, strict=True):
            with torch.no_grad():
                w.copy_(d * (torch.rand(d.shape, generator=generator, device=device) > 0.3 * (step % 3)))
        for subset in subsets:
            got, want = graphs.score(model, subset), eager.score(model, subset)
            np.testing.assert_array_equal(np.concatenate(got.logprobs), np.concatenate(want.logprobs))
            assert got.n_tokens == want.n_tokens
    assert all((b.kwargs["attention_mask"].dim() == 4) == packing for p in graphs.plans.values() for b in p.batches)
    assert graphs.captures == 2 and graphs.replays == 8 and eager.replays == 0
    other = llama(device="cuda")
    with pytest.raises(ValueError, match="parameter storage"):
        graphs.score(other, subsets[0])
    # a scorer captures on a stream of its own: graphs of two scorers (model replicas, lanes) replayed
    # side by side must not share the cuBLAS workspace of one capture stream
    second = TaskScorer(encoded, 16, cuda_graphs=True)
    second.score(other, subsets[0])
    assert graphs._stream is not None and second._stream is not None and graphs._stream != second._stream
    assert torch.cuda.current_stream() not in (graphs._stream, second._stream)


def test_every_forward_carries_a_masked_column() -> None:
    """What makes a captured graph give eager's bits: no forward of a plan has an all-ones mask
    (eager transformers would drop it and SDPA take another kernel), the shared prefix included."""
    model = llama()
    for encoded, padding in ((few_shot(20), "left"), (few_shot(9, single_token=False), "left"), (few_shot(6), "right")):
        plan = ScoringPlan.build(model, encoded, batch_size=4, padding=padding, forward_cost=None)
        masks = [b.kwargs["attention_mask"] for b in plan.batches]
        if plan.prefix is not None:
            masks.append(plan.prefix["attention_mask"])
            assert int(plan.prefix["attention_mask"][0, 0]) == 0 and int(plan.prefix["input_ids"][0, 0]) == 0
        assert masks and all(bool((mask == 0).any(dim=-1).all()) for mask in masks)
