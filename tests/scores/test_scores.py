import math

import pytest
import torch

from sieve.errors import SieveError
from sieve.primitives.mask import Pattern, mask_from_scores
from sieve.scores import SCORES, get_method
from sieve.scores.fused import fused_factor
from sieve.scores.sparsegpt import sparsegpt_prune
from sieve.stats import ChannelStats, MatrixStats


def _stats(sq, n=4, hessian=None):
    return ChannelStats(torch.tensor(sq, dtype=torch.float64), n, hessian)


def test_registry_and_parameters_validate_themselves():
    assert SCORES.names() == ["fused", "magnitude", "sparsegpt", "wanda"]
    with pytest.raises(SieveError, match="unknown scoring method 'obs'"):
        get_method("obs")
    with pytest.raises(SieveError, match="fused.alpha: Input should be less than or equal to 1"):
        get_method({"name": "fused", "alpha": 1.5})
    with pytest.raises(SieveError, match="magnitude.source: unknown key"):
        get_method({"name": "magnitude", "source": "task"})
    with pytest.raises(SieveError, match="wanda.source: Input should be 'general' or 'task'"):
        get_method({"name": "wanda", "source": "web"})
    assert get_method({"name": "fused", "tau": 3}).describe() == {"name": "fused", "tau": 3.0, "alpha": 0.5, "beta": 2.0}
    with pytest.raises(ValueError, match="registered twice"):
        SCORES.register(type("Other", (SCORES.get("wanda"),), {}))


def test_wanda_hand_computed():
    w = torch.tensor([[1.0, -2.0], [-3.0, 0.5]])
    stats = MatrixStats(general=_stats([4.0, 16.0], n=4))  # rms = [1, 2]
    scores = get_method("wanda").scores(w, stats)
    assert torch.allclose(scores, torch.tensor([[1.0, 4.0], [3.0, 1.0]]))
    task_scores = get_method({"name": "wanda", "source": "task"}).scores(w, MatrixStats(task=_stats([36.0, 4.0], n=4)))
    assert torch.allclose(task_scores, torch.tensor([[3.0, 2.0], [9.0, 0.5]]))


def test_fused_formula_hand_computed():
    g = torch.tensor([1.0, 1.0, 1.0, 1.0])
    t = torch.tensor([0.5, 0.5, 0.5, 2.5])  # mean 1.0 -> t_hat = t ; channel 3 is 2.5x > tau=2
    factor, exclusive = fused_factor(g, t, tau=2.0, alpha=0.5, beta=2.0)
    assert exclusive.tolist() == [False, False, False, True]
    assert math.isclose(factor[0].item(), math.sqrt(0.5), rel_tol=1e-5)
    assert math.isclose(factor[3].item(), 5.0, rel_tol=1e-5)
    # alpha = 0 with no exclusive channel is general-only Wanda up to a per-matrix constant
    f0, ex0 = fused_factor(g * 3, t, tau=100.0, alpha=0.0)
    assert not ex0.any() and torch.allclose(f0, torch.ones(4), atol=1e-6)


def test_fused_protects_task_exclusive_channels():
    w = torch.ones(1, 4)
    stats = MatrixStats(general=_stats([4.0, 4.0, 4.0, 0.04]), task=_stats([4.0, 4.0, 4.0, 4.0]))
    keep = mask_from_scores(get_method("fused").scores(w, stats), 0.5)
    wanda_keep = mask_from_scores(get_method("wanda").scores(w, stats), 0.5)
    assert keep[0, 3] and not wanda_keep[0, 3]


def test_sparsegpt_exact_and_better_reconstruction():
    torch.manual_seed(0)
    x = torch.randn(256, 64) * torch.linspace(0.1, 3, 64)
    w = torch.randn(16, 64)
    h = (x.t() @ x).float()
    for pattern, s in ((Pattern(), 0.5), (Pattern.parse("2:4"), 0.5), (Pattern(), 0.7)):
        pruned = sparsegpt_prune(w, h, s, pattern)
        zeros = (pruned == 0).sum(1)
        assert (zeros == int(64 * s)).all()
        wanda = w * mask_from_scores(w.abs() * x.pow(2).mean(0).sqrt(), s, pattern)
        err_sgpt = (x @ (w - pruned).t()).pow(2).sum()
        err_wanda = (x @ (w - wanda).t()).pow(2).sum()
        assert err_sgpt < err_wanda
