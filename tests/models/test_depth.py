"""Decoder-block removal: the pruned model saves as a plain transformers folder that loads (without
sieve) to the same logits and greedy generations, and computes "the original minus those blocks"
(a model built from the smaller config with the kept blocks' weights copied in by hand)."""

from __future__ import annotations

import copy
import itertools
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from sieve.errors import SieveError
from sieve.models.adapters import adapter_for
from sieve.models.depth import INDEX_ATTRIBUTES, config_without_blocks, decoder_blocks, remove_blocks

VOCAB, WINDOW, SEQ, PROMPT, NEW = 96, 4, 12, 4, 8
S, F = "sliding_attention", "full_attention"


@dataclass(frozen=True)
class Family:
    config: type
    model: type
    kwargs: dict
    removed: tuple[int, ...]
    #: the smaller model's config fields, written out by hand
    expected: dict = field(default_factory=dict)


SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_attention_heads=4, num_key_value_heads=2)
FAMILIES = {
    "llama": Family(LlamaConfig, LlamaForCausalLM, dict(SMALL, num_hidden_layers=5), (1, 3), dict(num_hidden_layers=3)),
    # layers (full, full, sliding, sliding, sliding); without block 1 the second layer slides
    "qwen2": Family(Qwen2Config, Qwen2ForCausalLM,
                    dict(SMALL, num_hidden_layers=5, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=2),
                    (1,), dict(num_hidden_layers=4, max_window_layers=1, layer_types=[F, S, S, S])),
    # layers (sliding, sliding, full, sliding, sliding); without block 1 the full layer moves from index 2 to 1
    "gemma3": Family(Gemma3TextConfig, Gemma3ForCausalLM,
                     dict(SMALL, num_hidden_layers=5, head_dim=12, query_pre_attn_scalar=16, sliding_window=WINDOW,
                          layer_types=[S, S, F, S, S], rope_theta=1000.0, rope_local_base_freq=100.0),
                     (1,), dict(num_hidden_layers=4, layer_types=[S, F, S, S])),
    "gpt2": Family(GPT2Config, GPT2LMHeadModel, dict(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4, bos_token_id=0, eos_token_id=0),
                   (0, 2),
                   dict(n_layer=2)),
}


def build(family: Family) -> torch.nn.Module:
    torch.manual_seed(0)
    model = family.model(family.config(**family.kwargs)).eval()
    with torch.no_grad():  # random norm weights: a block whose norm went missing would show
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.normal_(1, 0.5)
    return model


def reference(original: torch.nn.Module, family: Family) -> torch.nn.Module:
    """The smaller model built from scratch, the kept blocks' weights copied in (keys renumbered)."""
    config = copy.deepcopy(original.config)
    for key, value in family.expected.items():
        setattr(config, key, value)
    model = family.model(config).eval()
    prefix = adapter_for(original).blocks(original)[0] + "."
    count = len(decoder_blocks(original))
    kept = [i for i in range(count) if i not in family.removed]
    renumber = {f"{prefix}{old}.": f"{prefix}{new}." for new, old in enumerate(kept)}
    state = {}
    for key, value in original.state_dict().items():
        if key.startswith(prefix):
            index, _, rest = key[len(prefix):].partition(".")
            if int(index) in family.removed:
                continue
            key = renumber[f"{prefix}{index}."] + rest
        state[key] = value
    model.load_state_dict(state, strict=True)
    return model


def outputs(model: torch.nn.Module, ids: torch.Tensor, *generations: bool) -> dict[str, torch.Tensor]:
    """Logits on ``ids``; greedy continuations of its first tokens with (``cached``) and without the KV cache."""
    out = {}
    with torch.no_grad():
        out["logits"] = model(ids).logits
        for use_cache in generations:
            out["cached" if use_cache else "uncached"] = model.generate(
                ids[:, :PROMPT], use_cache=use_cache, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    return out


LOAD_WITHOUT_SIEVE = """
import sys, torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM
ids = torch.load(sys.argv[1])
gen = dict(max_new_tokens={new}, min_new_tokens={new}, do_sample=False)
out = {{}}
for name, path in zip(sys.argv[3::2], sys.argv[4::2]):
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        out[name] = dict(logits=model(ids).logits, cached=model.generate(ids[:, :{prompt}], use_cache=True, **gen))
assert "sieve" not in sys.modules
torch.save(out, sys.argv[2])
""".format(new=NEW, prompt=PROMPT)


@pytest.fixture(scope="module")
def depth_runs(tmp_path_factory):
    """Per family: the original, the pruned model and its folder, the reference, their outputs; and
    the outputs of every folder loaded by plain transformers in one subprocess without sieve."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread only adds OpenMP overhead (3x slower on 2 busy cores)
    try:
        yield run_families(tmp_path_factory.mktemp("depth"))
    finally:
        torch.set_num_threads(threads)


def run_families(root: Path) -> dict[str, dict]:
    ids = torch.randint(3, VOCAB, (1, SEQ), generator=torch.Generator().manual_seed(1))
    torch.save(ids, root / "ids.pt")
    runs = {}
    for name, family in FAMILIES.items():
        original = build(family)
        pruned = copy.deepcopy(original)
        remove_blocks(pruned, family.removed)
        pruned.save_pretrained(root / name)
        ref = reference(original, family)
        runs[name] = dict(original=original, pruned=pruned, folder=root / name, ref=ref,
                          out=outputs(pruned, ids, True, False), ref_out=outputs(ref, ids, True),
                          full_out=outputs(original, ids))
    args = [str(a) for name in runs for a in (name, root / name)]
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_SIEVE, str(root / "ids.pt"), str(root / "loaded.pt"), *args],
                          cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = torch.load(root / "loaded.pt")
    for name in runs:
        runs[name]["loaded"] = loaded[name]
    return runs


@pytest.mark.parametrize("name", FAMILIES)
def test_plain_transformers_load_gives_the_same_logits_and_generations(depth_runs, name):
    run = depth_runs[name]
    assert (run["loaded"]["logits"] - run["out"]["logits"]).abs().max().item() == 0.0
    assert torch.equal(run["loaded"]["cached"], run["out"]["cached"])


@pytest.mark.parametrize("name", FAMILIES)
def test_pruned_model_is_the_original_minus_the_blocks(depth_runs, name):
    run = depth_runs[name]
    assert (run["ref_out"]["logits"] - run["out"]["logits"]).abs().max().item() == 0.0
    assert torch.equal(run["ref_out"]["cached"], run["out"]["cached"])
    assert not torch.allclose(run["full_out"]["logits"], run["out"]["logits"], atol=1e-3)  # the blocks mattered


@pytest.mark.parametrize("name", FAMILIES)
def test_kv_cache_generation_matches_uncached(depth_runs, name):
    """Each kept attention writes its own cache slot: cached greedy decoding equals recomputing
    the whole sequence every step (12 tokens, past the 4-token sliding window)."""
    out = depth_runs[name]["out"]
    assert out["cached"].shape == (1, PROMPT + NEW)
    assert torch.equal(out["cached"], out["uncached"])


@pytest.mark.parametrize("name", FAMILIES)
def test_per_layer_fields_are_consistent(depth_runs, name):
    run, family = depth_runs[name], FAMILIES[name]
    saved = json.loads(Path(run["folder"], "config.json").read_text())
    for key, value in family.expected.items():
        assert saved[key] == value
        assert getattr(run["pruned"].config, key) == value
    count = saved.get("num_hidden_layers", saved.get("n_layer"))
    assert len(decoder_blocks(run["pruned"])) == count
    if "layer_types" in saved:
        assert len(saved["layer_types"]) == count
    for index, block in enumerate(decoder_blocks(run["pruned"])):
        found = [getattr(m, a) for m in block.modules() for a in INDEX_ATTRIBUTES if isinstance(getattr(m, a, None), int)]
        assert found and set(found) == {index}
        if "layer_types" in saved:
            assert block.self_attn.sliding_window == (WINDOW if saved["layer_types"][index] == S else None)


def test_qwen2_has_sliding_layers_follows_the_kept_blocks():
    model = build(FAMILIES["qwen2"])
    remove_blocks(model, [2, 3, 4])
    assert model.config.layer_types == [F, F] and model.config.max_window_layers == 2
    assert model.model.has_sliding_layers is False


def test_max_window_layers_rederives_the_sliced_layer_types():
    """For every removal, Qwen2's own rule on the recomputed ``max_window_layers`` gives the
    sliced ``layer_types``: a loader that re-derives them agrees."""
    base = Qwen2Config(num_hidden_layers=6, use_sliding_window=True, sliding_window=WINDOW, max_window_layers=3).to_dict()
    for size in range(1, 6):
        for removed in itertools.combinations(range(6), size):
            new = config_without_blocks(base, removed)
            rederived = Qwen2Config(**{k: v for k, v in new.items() if k != "layer_types"})
            assert rederived.layer_types == new["layer_types"], removed
            assert len(new["layer_types"]) == new["num_hidden_layers"] == 6 - size


def test_generic_per_layer_lists_are_sliced_and_token_lists_are_not():
    config = dict(num_hidden_layers=3, layer_types=[S, F, S], no_rope_layers=(1, 0, 1), eos_token_id=[5, 6, 7],
                  architectures=["A", "B", "C"], id2label={0: "a", 1: "b", 2: "c"}, hidden_size=32)
    new = config_without_blocks(config, [0])
    assert new == dict(config, num_hidden_layers=2, layer_types=[F, S], no_rope_layers=(0, 1))
    assert config["layer_types"] == [S, F, S]  # the input is left alone


def test_moe_sparse_step_is_spelled_out_for_the_kept_blocks():
    """Qwen-MoE: block ``i`` is dense iff ``i ∈ mlp_only_layers`` or ``(i + 1) % decoder_sparse_step != 0``."""
    def dense(cfg, i):
        return i in cfg["mlp_only_layers"] or (i + 1) % cfg["decoder_sparse_step"] != 0

    config = dict(num_hidden_layers=6, num_experts=4, decoder_sparse_step=2, mlp_only_layers=[1])
    new = config_without_blocks(config, [2, 4])
    assert new["decoder_sparse_step"] == 1 and new["mlp_only_layers"] == [0, 1]
    assert [dense(new, j) for j in range(4)] == [dense(config, k) for k in (0, 1, 3, 5)]
    plain = config_without_blocks(dict(num_hidden_layers=4, num_experts=4, decoder_sparse_step=1, mlp_only_layers=[0, 2, 3]), [2])
    assert plain["mlp_only_layers"] == [0, 2]


@pytest.mark.parametrize(("removed", "message"), [
    ([0, 1, 2, 3], "cannot remove all 4"),
    ([4], "block 4 is out of range"),
    ([-1], "block -1 is out of range"),
    ([1, 1], "block 1 is listed twice"),
])
def test_bad_removals_are_refused_before_anything_changes(removed, message):
    model = build(FAMILIES["gpt2"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(SieveError, match=message):
        remove_blocks(model, removed)
    assert model.config.n_layer == 4 and len(model.transformer.h) == 4
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_gpt2_inverse_layer_scaling_is_refused():
    family = FAMILIES["gpt2"]
    model = GPT2LMHeadModel(GPT2Config(**family.kwargs, scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(SieveError, match="scale_attn_by_inverse_layer_idx"):
        remove_blocks(model, [0])
    assert len(model.transformer.h) == 4
