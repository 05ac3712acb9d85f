"""The low-rank primitive: the closed form is the optimum of the output error, damping keeps a
singular covariance usable, and parameter counting is exact."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sieve.primitives.lowrank import (
    LowRank,
    break_even_rank,
    factor_params,
    factorize,
    mixed_covariance,
    rank_for_removal,
    removed_params,
    whitening,
)


def _output_error(w, w2, x):
    return float(((w - w2) @ x.T).norm())


@pytest.mark.parametrize("seed", range(4))
def test_closed_form_is_the_rank_r_optimum_of_the_output_error(seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.3, 2.0, 0.1], dtype=torch.float64)
    factors = factorize(w, x.T @ x, damp=1e-12)
    m = w @ x.T  # the output the projection should preserve
    sv = torch.linalg.svdvals(m)
    for r in range(1, 5):
        ours = _output_error(w, factors.weight(r), x)
        assert ours == pytest.approx(float(sv[r:].pow(2).sum().sqrt()), rel=1e-9)  # Eckart–Young bound, attained
        # brute force: alternating least squares on A, B from random starts never does better
        cov, best = x.T @ x, math.inf
        for start in range(5):
            b = torch.randn(r, 5, generator=torch.Generator().manual_seed(100 * seed + start), dtype=torch.float64)
            for _ in range(200):
                a = w @ cov @ b.T @ torch.linalg.inv(b @ cov @ b.T)  # argmin over A for this B
                b = torch.linalg.solve(a.T @ a, a.T @ w)  # argmin over B for this A
            best = min(best, _output_error(w, a @ b, x))
        assert ours <= best * (1 + 1e-9)
        assert best == pytest.approx(ours, rel=1e-6)  # and ALS finds the same optimum
        # and the plain SVD of W (data-blind) is worse whenever the data are anisotropic
        u, s, vh = torch.linalg.svd(w, full_matrices=False)
        assert ours <= _output_error(w, (u[:, :r] * s[:r]) @ vh[:r], x) + 1e-9


def test_a_singular_covariance_is_damped_and_full_rank_reconstructs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g, dtype=torch.float64)
    x = torch.cat([x, x[:, :1], torch.zeros(30, 1, dtype=torch.float64)], 1)  # a duplicate and a dead channel
    cov = x.T @ x
    assert torch.linalg.matrix_rank(cov) == 4
    lower = whitening(cov)
    assert torch.isfinite(lower).all() and (torch.diagonal(lower) > 0).all()
    w = torch.randn(3, 6, generator=g, dtype=torch.float64)
    factors = factorize(w, cov)
    assert torch.allclose(factors.weight(3), w, atol=1e-10)  # every component kept: W itself
    assert torch.isfinite(factors.weight(1)).all()


def test_fused_covariance_normalises_each_source():
    g = torch.eye(3, dtype=torch.float64) * 100.0
    t = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    mixed = mixed_covariance(g, t, 0.5)
    assert torch.allclose(mixed, 0.5 * torch.eye(3, dtype=torch.float64) + 0.5 * t / 2.0)
    assert torch.equal(mixed_covariance(g, None, 0.0), g / 100.0)
    assert LowRank().sources == ("general", "task")
    assert LowRank(covariance="task").sources == ("task",) and LowRank(alpha=0.0).sources == ("general",)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 300), st.integers(1, 300), st.data())
def test_parameter_counting(rows, cols, data):
    r_star = break_even_rank(rows, cols)
    assert r_star * (rows + cols) >= rows * cols > (r_star - 1) * (rows + cols)
    assert factor_params(rows, cols, r_star) == rows * cols and removed_params(rows, cols, r_star) == 0
    want = data.draw(st.integers(1, rows * cols))
    rank = rank_for_removal(rows, cols, want)
    assert 0 <= rank < r_star
    assert removed_params(rows, cols, rank) >= want  # removes at least what was asked
    assert rank + 1 >= r_star or removed_params(rows, cols, rank + 1) < want  # and is the largest such rank
    multiple = data.draw(st.sampled_from([2, 8, 64]))
    aligned = rank_for_removal(rows, cols, want, multiple)
    assert aligned % multiple == 0 and removed_params(rows, cols, aligned) >= want  # aligned: still enough removed
    assert aligned + multiple > rank  # and the largest such multiple


def test_ranks_are_multiples_of_64_on_wide_matrices_by_default():
    """``rank_multiple: auto`` aligns ranks where the measured GEMMs pay for it (a side of 512 or
    more) and leaves them free below; an explicit multiple applies everywhere; 0 is refused."""
    auto = LowRank()
    assert auto.rank_multiple == "auto"
    assert [auto.multiple_for(*shape) for shape in [(576, 1536), (1536, 576), (512, 4096), (511, 4096), (32, 64)]] == [
        64, 64, 64, 1, 1]
    assert LowRank(rank_multiple=8).multiple_for(32, 64) == LowRank(rank_multiple=8).multiple_for(4096, 4096) == 8
    for removed in (1, 10_000, 300_000):
        assert rank_for_removal(576, 1536, removed, auto.multiple_for(576, 1536)) % 64 == 0
    with pytest.raises(ValueError, match="rank_multiple must be 'auto' or at least 1"):
        LowRank(rank_multiple=0)
