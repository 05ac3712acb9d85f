"""Masked LoRA on tiny tensors: exact zeros in the forward and after the merge; plain LoRA fills them."""

import pytest
import torch
from torch import nn

from sieve.tune.config import LoraSettings
from sieve.tune.data import IGNORE, batch_indices, collate
from sieve.tune.loss import combined, continuation_nll, distill_kl
from sieve.tune.masked_lora import MaskedLoraLinear, adapter_state, attach, merge


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(16, 12), nn.Linear(12, 8)
        with torch.no_grad():
            self.a.weight[torch.rand(12, 16, generator=torch.Generator().manual_seed(1)) < 0.6] = 0.0

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def _train(model, params, steps=15):
    opt = torch.optim.AdamW(list(params.values()), lr=5e-2)
    x = torch.randn(32, 16, generator=torch.Generator().manual_seed(2))
    for _ in range(steps):
        loss = (model(x) - 1).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x


@pytest.mark.parametrize("keep_zeros", [True, False])
def test_merge_keeps_exact_zeros_only_when_masked(keep_zeros):
    model = Two()
    zeros = (model.a.weight == 0).clone()
    params = attach(model, ["a", "b"], LoraSettings(rank=4), keep_zeros=keep_zeros, seed=0)
    assert isinstance(model.a, MaskedLoraLinear) == keep_zeros
    x = _train(model, params)
    if keep_zeros:
        assert model.a.masked and not model.b.masked  # b has no zeros: plain LoRA
        effective = model.a.base_layer.weight + model.a.get_delta_weight("default")
        assert torch.equal(effective == 0, zeros | (effective == 0)) and bool((effective[zeros] == 0).all())
    with torch.no_grad():
        adapted = model(x)
    merge(model)
    assert type(model.a) is nn.Linear and type(model.b) is nn.Linear and not adapter_state(model)
    w = model.a.weight
    if keep_zeros:
        assert int((w == 0).sum()) == int(zeros.sum()) > 80 and bool((w[zeros] == 0).all())
        assert not torch.signbit(w[zeros]).any()  # +0.0, not −0.0
    else:
        assert int((w == 0).sum()) == 0  # a plain LoRA merge fills every zero in (the ablation)
    with torch.no_grad():
        assert torch.allclose(model(x), adapted, atol=1e-6)


def test_masked_forward_is_the_masked_weight():
    model = Two()
    attach(model, ["a"], LoraSettings(rank=4, alpha=8.0), keep_zeros=True, seed=0)
    with torch.no_grad():
        model.a.lora_B["default"].weight.normal_()
    x = torch.randn(5, 16)
    keep = model.a.base_layer.weight != 0
    dense = model.a.lora_B["default"].weight @ model.a.lora_A["default"].weight * 2.0
    expected = x @ (model.a.base_layer.weight + dense * keep).T + model.a.base_layer.bias
    with torch.no_grad():
        assert torch.allclose(model.a(x), expected, atol=1e-5)


def test_batches_are_a_function_of_the_step():
    first = [batch_indices(10, 4, 0, s) for s in (1, 2, 3)]
    assert sorted(first[0] + first[1] + first[2][:2]) == list(range(10))  # epoch 0 covered once
    assert first == [batch_indices(10, 4, 0, s) for s in (1, 2, 3)] and first != [batch_indices(10, 4, 1, s)
                                                                                  for s in (1, 2, 3)]
    batch = collate([((5, 6, 7, 8), 2), ((1, 2, 3), 1)], pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7], [1, 2, 0]]
    assert batch.labels.tolist() == [[IGNORE, 7, 8], [IGNORE, 3, IGNORE]] and batch.target_tokens == 3


def test_losses():
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[IGNORE, 1, 2], [IGNORE, 3, IGNORE]])
    manual = -(torch.log_softmax(logits, -1)[[0, 0, 1], [1, 2, 1], [1, 2, 3]]).mean()
    assert torch.allclose(continuation_nll(logits, labels), manual)
    assert float(distill_kl(logits, logits, None)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_kl(logits, logits.flip(-1), torch.ones(2, 3))) > 0
    from sieve.tune.config import DistillSettings

    one = torch.tensor(1.0)
    assert float(combined(one, torch.tensor(2.0), torch.tensor(4.0), DistillSettings(weight=0.5, general_mix=0.25))) \
        == pytest.approx(1 + 0.5 * (0.75 * 2 + 0.25 * 4))
    assert float(combined(one, torch.tensor(2.0), None, None)) == 1.0
