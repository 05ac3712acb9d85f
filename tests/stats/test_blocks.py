import math

import numpy as np
import pytest
import torch

from sieve.errors import SieveError
from sieve.models.depth import decoder_blocks
from sieve.stats.blocks import (
    BlockSimilarity,
    angular_sums,
    block_input,
    block_output,
    block_similarity,
    cosines,
    last_token_index,
)
from tests.conftest import tiny_gpt2, tiny_llama

LAYERS = 4


@pytest.fixture(scope="module")
def llama4():
    return tiny_llama(vocab=64, layers=LAYERS, seed=0)


def reference_states(model, ids: torch.Tensor) -> list[torch.Tensor]:
    """``x_0 … x_L`` of one unpadded sequence (``ids`` 1 × T): ``hidden_states[0 … L−1]`` are the
    blocks' inputs, but ``hidden_states[L]`` is after the final norm, so ``x_L`` (the last block's
    output) comes from a hook."""
    out = []
    handle = decoder_blocks(model)[-1].register_forward_hook(lambda mod, args, o: out.append(o))
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    handle.remove()
    assert len(hidden) == LAYERS + 1 and not torch.allclose(hidden[-1], out[0])  # the final norm is in between
    return [h[0].double() for h in hidden[:LAYERS]] + [out[0][0].double()]


def reference(model, sequences: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Influence and angular distances by their definitions, one sequence at a time."""
    cos_sum, tokens = np.zeros(LAYERS), 0
    angular = np.zeros((LAYERS, LAYERS + 1))
    for ids in sequences:
        x = reference_states(model, ids[None])
        tokens += ids.numel()
        for l in range(LAYERS):
            cos_sum[l] += torch.nn.functional.cosine_similarity(x[l], x[l + 1], dim=-1).sum().item()
            for n in range(1, LAYERS + 1 - l):  # n = 0 stays exactly 0
                c = torch.nn.functional.cosine_similarity(x[l][-1], x[l + n][-1], dim=0).item()
                angular[l, n] += math.acos(max(-1.0, min(1.0, c))) / math.pi
    angular /= len(sequences)
    for l in range(LAYERS):
        angular[l, LAYERS + 1 - l:] = np.nan
    return 1 - cos_sum / tokens, angular


def test_matches_hidden_states_by_definition(llama4):
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 64, (9,), generator=g) for _ in range(3)]
    got = block_similarity(llama4, [(torch.stack(seqs[:2]), None), (seqs[2][None], torch.ones(1, 9, dtype=torch.long))])
    influence, angular = reference(llama4, seqs)
    assert got.tokens == 27 and got.sequences == 3 and got.blocks == LAYERS
    assert got.influence.shape == (LAYERS,) and got.angular.shape == (LAYERS, LAYERS + 1)
    assert got.influence.dtype == np.float64 and got.angular.dtype == np.float64
    np.testing.assert_allclose(got.influence, influence, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got.cosine, 1 - influence, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(np.isnan(got.angular), np.isnan(angular))  # NaN exactly where l + n > L
    np.testing.assert_allclose(got.angular, angular, rtol=1e-6, atol=1e-9, equal_nan=True)
    assert (got.angular[:, 0] == 0).all() and np.nanmin(got.angular[:, 1:]) > 0 and (got.influence > 0).all()
    with pytest.raises(ValueError):
        got.influence[0] = 0.0  # read-only


def test_padding_is_excluded(llama4):
    """Right padding with garbage pad ids: same numbers as the unpadded rows one by one."""
    g = torch.Generator().manual_seed(2)
    a, b, c = (torch.randint(0, 64, (n,), generator=g) for n in (10, 6, 3))
    unpadded = block_similarity(llama4, [(a[None], None), (b[None], None), (c[None], None)])
    ids = torch.randint(0, 64, (4, 10), generator=g)
    mask = torch.zeros(4, 10, dtype=torch.long)
    for row, s in enumerate((a, b, c)):
        ids[row, : len(s)], mask[row, : len(s)] = s, 1
    padded = block_similarity(llama4, [(ids, mask)])  # row 3: no real token at all
    assert padded.tokens == unpadded.tokens == 19 and padded.sequences == unpadded.sequences == 3
    np.testing.assert_allclose(padded.influence, unpadded.influence, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(padded.angular, unpadded.angular, rtol=1e-5, atol=1e-8, equal_nan=True)
    influence, angular = reference(llama4, [a, b, c])
    np.testing.assert_allclose(padded.influence, influence, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(padded.angular, angular, rtol=1e-5, atol=1e-8, equal_nan=True)


def test_explicit_blocks_and_gpt2(llama4):
    """``blocks=`` measures only those blocks: the first two of the Llama are a 2-block stack whose
    ``x_2`` is block 1's output. GPT-2's blocks are found by its adapter."""
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(3))
    full = block_similarity(llama4, [(ids, None)])
    first = block_similarity(llama4, [(ids, None)], blocks=decoder_blocks(llama4)[:2])
    np.testing.assert_allclose(first.influence, full.influence[:2], rtol=1e-12)
    expected = full.angular[:2, :3].copy()
    expected[1, 2] = np.nan  # block 2 is not part of the measured stack
    np.testing.assert_allclose(first.angular, expected, rtol=1e-12, equal_nan=True)
    gpt2 = block_similarity(tiny_gpt2(vocab=64, layers=3), [(ids, None)])
    assert gpt2.blocks == 3 and np.isfinite(gpt2.influence).all() and gpt2.tokens == 14


def test_no_real_tokens_is_an_error(llama4):
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(SieveError, match="no real tokens"):
        block_similarity(llama4, [(ids, torch.zeros(2, 5, dtype=torch.long))])
    with pytest.raises(SieveError, match="no real tokens"):
        block_similarity(llama4, [])


def test_pure_helpers():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])
    assert last_token_index(mask).tolist() == [2, 3, -1, 2]
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    y = torch.tensor([[0.0, 3.0], [2.0, 2.0], [1.0, 0.0], [-1.0, 0.0]])
    got = cosines(x, y)
    assert got.dtype == torch.float64 and got.tolist() == pytest.approx([0.0, 1.0, 0.0, -1.0], abs=1e-15)  # zero → 0
    # Rounding can put |x·y| a hair above ‖x‖‖y‖ (arccos would be NaN): clamped into [−1, 1].
    v = torch.randn(2000, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    same = cosines(v, v * 3.0)
    assert (same <= 1.0).all() and torch.isfinite(torch.arccos(same)).all() and (same > 1 - 1e-15).all()
    raw = (v * v * 3.0).sum(-1) / (v.norm(dim=-1) * (v * 3.0).norm(dim=-1))
    assert (raw > 1.0).any()  # without the clamp some of these would leave arccos's domain
    # One sequence, three states at 0°, 90°, 180°: D(0,1) = D(1,1) = ½, D(0,2) = 1.
    states = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]])
    np.testing.assert_allclose(angular_sums(states).numpy(), [[0, 0.5, 1.0], [0, 0.5, np.nan]], equal_nan=True)
    h = torch.ones(1, 2, 3)
    assert block_input((h,), {}) is h and block_input((), {"hidden_states": h}) is h
    assert block_output(h) is h and block_output((h, None)) is h
    with pytest.raises(SieveError):
        block_input((), {})
    with pytest.raises(ValueError):
        BlockSimilarity(influence=np.zeros(3), angular=np.zeros((3, 3)), tokens=1, sequences=1)
