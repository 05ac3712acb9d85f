import math

import numpy as np
import pytest

from sieve.errors import SieveError
from sieve.prune.depth_choice import angular_blocks, greedy_blocks, greedy_path, shortgpt_blocks

NAN = math.nan


def test_shortgpt_lowest_influence_sorted_ties_to_lower_index():
    influence = np.array([0.9, 0.1, 0.5, 0.1, 0.3, 0.5])
    assert shortgpt_blocks(influence, 0) == ()
    assert shortgpt_blocks(influence, 1) == (1,)  # 1 and 3 tie: the lower index
    assert shortgpt_blocks(influence, 2) == (1, 3)
    assert shortgpt_blocks(influence, 3) == (1, 3, 4)
    assert shortgpt_blocks(influence, 4) == (1, 2, 3, 4)  # 2 and 5 tie at 0.5
    assert shortgpt_blocks(influence, 5) == (1, 2, 3, 4, 5)
    assert shortgpt_blocks([0.2, 0.2, 0.2], 2) == (0, 1)


def angular_table(rows: list[list[float]]) -> np.ndarray:
    table = np.array(rows, dtype=np.float64)
    assert table.shape[1] == table.shape[0] + 1
    return table


def test_angular_best_contiguous_run_ties_to_lower_start():
    a = angular_table([
        [0, 0.30, 0.50, 0.70, 0.90],
        [0, 0.20, 0.40, 0.60, NAN],
        [0, 0.10, 0.40, NAN, NAN],
        [0, 0.10, NAN, NAN, NAN],
    ])
    assert angular_blocks(a, 0) == ()
    assert angular_blocks(a, 1) == (2,)  # starts 2 and 3 tie at 0.10: the lower start
    assert angular_blocks(a, 2) == (1, 2)  # starts 1 and 2 tie at 0.40
    assert angular_blocks(a, 3) == (1, 2, 3)
    a[0, 3] = 0.55
    assert angular_blocks(a, 3) == (0, 1, 2)


def test_out_of_range_and_bad_input():
    for k in (-1, 4, 5):
        with pytest.raises(SieveError, match=f"cannot remove {k} of 4 decoder blocks: choose 0 to 3"):
            shortgpt_blocks(np.zeros(4), k)
        with pytest.raises(SieveError, match=f"cannot remove {k} of 4"):
            angular_blocks(np.zeros((4, 5)), k)
        with pytest.raises(SieveError, match=f"cannot remove {k} of 4"):
            greedy_blocks(lambda r: 0.0, 4, k)
    with pytest.raises(SieveError, match="integer"):
        shortgpt_blocks(np.zeros(4), 1.5)
    with pytest.raises(SieveError, match="shape"):
        shortgpt_blocks(np.zeros((2, 2)), 1)
    with pytest.raises(SieveError, match="non-finite"):
        shortgpt_blocks(np.array([0.1, NAN, 0.2]), 1)
    with pytest.raises(SieveError, match=r"shape \(L, L\+1\)"):
        angular_blocks(np.zeros((4, 4)), 1)
    bad = np.zeros((3, 4))
    bad[1, 2] = NAN
    with pytest.raises(SieveError, match=r"non-finite at starts \[1\]"):
        angular_blocks(bad, 2)
    with pytest.raises(SieveError, match="at least one"):
        greedy_path(lambda r: 0.0, 0, 0)


class Counted:
    """A cost with a known greedy answer: removing block ``b`` alone costs ``single[b]``, and a
    pair costs extra ``pair[{a, b}]`` (interactions a one-shot ranking would miss)."""

    def __init__(self, single, pair):
        self.single, self.pair, self.calls = single, pair, []

    def __call__(self, removed: frozenset[int]) -> float:
        assert isinstance(removed, frozenset)
        self.calls.append(removed)
        value = sum(self.single[b] for b in removed)
        return value + sum(v for key, v in self.pair.items() if key <= removed)


def test_greedy_follows_interactions_and_counts_calls():
    # Alone, 0 and 1 are cheapest; but removing both costs +10, so greedy takes 0, then 2, then 3.
    cost = Counted([1.0, 1.0, 2.0, 2.5, 5.0], {frozenset({0, 1}): 10.0})
    path = greedy_path(cost, 5, 3)
    assert path == [(0, 1.0), (2, 3.0), (3, 5.5)]  # 0 and 1 tie at step 1: the lower index
    assert len(cost.calls) == 5 + 4 + 3
    assert cost.calls[:5] == [frozenset({b}) for b in range(5)]
    assert cost.calls[5:9] == [frozenset({0, b}) for b in (1, 2, 3, 4)]
    assert cost.calls[9:] == [frozenset({0, 2, b}) for b in (1, 3, 4)]
    cost.calls.clear()
    assert greedy_blocks(cost, 5, 3) == (0, 2, 3) and len(cost.calls) == 12
    cost.calls.clear()
    assert greedy_blocks(cost, 5, 4) == (0, 2, 3, 4) and len(cost.calls) == 5 + 4 + 3 + 2
    cost.calls.clear()
    assert greedy_path(cost, 5, 0) == [] and cost.calls == []


def test_greedy_sorted_output_and_nan_ranks_last():
    # Costs favour high indices: removal order 3, 2, 1, returned sorted.
    assert greedy_path(lambda r: -float(sum(r)), 4, 3) == [(3, -3.0), (2, -5.0), (1, -6.0)]
    assert greedy_blocks(lambda r: -float(sum(r)), 4, 3) == (1, 2, 3)
    # A NaN cost (a broken model) is never preferred to a number, even +inf.
    assert greedy_path(lambda r: NAN if 0 in r else (math.inf if 1 in r else 7.0), 3, 1) == [(2, 7.0)]
    assert greedy_path(lambda r: NAN if 0 in r else math.inf, 3, 1) == [(1, math.inf)]
    [(block, value)] = greedy_path(lambda r: NAN, 3, 1)
    assert block == 0 and math.isnan(value)
