import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sieve.errors import SieveError
from sieve.primitives.mask import Pattern, mask_from_scores, row_prune_count


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 9), cols=st.integers(1, 40), s=st.floats(0, 0.99), seed=st.integers(0, 10**6), quantised=st.booleans())
def test_unstructured_exact_per_row(rows, cols, s, seed, quantised):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(rows, cols, generator=g)
    if quantised:
        scores = (scores * 4).round()
    keep = mask_from_scores(scores, s)
    k = row_prune_count(cols, s)
    assert (keep.logical_not().sum(1) == k).all()
    # pruned weights never score above kept ones in the same row
    for r in range(rows):
        if 0 < k < cols:
            assert scores[r][~keep[r]].max() <= scores[r][keep[r]].min()


@settings(max_examples=100, deadline=None)
@given(rows=st.integers(1, 6), groups=st.integers(1, 8), nm=st.sampled_from(["2:4", "4:8", "1:4"]), seed=st.integers(0, 10**6))
def test_nm_valid(rows, groups, nm, seed):
    p = Pattern.parse(nm)
    scores = torch.rand(rows, groups * p.m, generator=torch.Generator().manual_seed(seed))
    keep = mask_from_scores(scores, p.sparsity, p).view(rows, groups, p.m)
    assert (keep.logical_not().sum(-1) == p.n).all()


def test_hand_example_and_ties():
    scores = torch.tensor([[3.0, 1.0, 2.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    keep = mask_from_scores(scores, 0.5)
    assert keep.tolist() == [[True, False, True, False], [False, False, True, True]]


def test_pattern_errors():
    with pytest.raises(SieveError, match="does not divide"):
        Pattern.parse("2:4").check("m", 6)
    with pytest.raises(SieveError):
        Pattern.parse("4:2")
    with pytest.raises(SieveError):
        Pattern.parse("half")
    assert str(Pattern.parse("unstructured")) == "unstructured"
