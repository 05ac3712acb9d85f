"""Gemma 3 through sieve: a tiny random model for the structure, the fast paths and the scorer, and
(``real_model``) the embedded Gemma 3 270M for conversion and agreement with lm-eval.

Gemma 3 differs from Llama where sieve could go wrong: q/k RMS norms inside attention (not Linear, so
never prunable), embeddings scaled by sqrt(hidden) and tied to the output, a sliding attention window
on five of every six layers with different RoPE bases per layer type, and ``query_pre_attn_scalar``
instead of ``head_dim`` for the attention scale.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from sieve.data.general import GeneralCorpus, token_blocks
from sieve.errors import SieveError
from sieve.metrics.perplexity import perplexity
from sieve.models.adapters import adapter_for, find_matrices
from sieve.models.forward import CACHE_ARGUMENTS, ForwardFeatures, forward_features
from sieve.models.loading import BUILTIN_MODELS, load_model
from sieve.scoring import plan as scoring_plan
from sieve.scoring.encode import EncodedTask, encode_task
from sieve.scoring.plan import score_examples
from sieve.scoring.results import choice_metrics

VOCAB = 300  # the conftest's tiny_gemma3: 4 layers (sliding, sliding, full, sliding), 24-token window
WINDOW = 24
KINDS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
         "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def test_gemma3_particulars_are_in_the_tiny_model(gemma3):
    """The tiny model has what the real one has (so the tests below exercise it)."""
    embed = gemma3.model.embed_tokens
    assert gemma3.lm_head.weight is embed.weight
    assert float(embed.embed_scale) == pytest.approx(32 ** 0.5)
    attn = [layer.self_attn for layer in gemma3.model.layers]
    assert [a.sliding_window for a in attn] == [WINDOW, WINDOW, None, WINDOW]
    assert attn[0].scaling == pytest.approx(16 ** -0.5)  # query_pre_attn_scalar, not head_dim
    assert attn[0].q_norm.weight.shape == attn[0].k_norm.weight.shape == (12,)


def test_adapter_finds_the_seven_projections_of_every_layer(gemma3):
    prefix, blocks = adapter_for(gemma3).blocks(gemma3)
    assert prefix == "model.layers" and len(blocks) == 4
    mats = find_matrices(gemma3)
    assert [m.kind for m in mats] == KINDS * 4
    assert [m.block for m in mats] == [b for b in range(4) for _ in KINDS]
    shapes = {m.kind: m.shape for m in mats if m.block == 2}
    assert shapes == {"self_attn.q_proj": (48, 32), "self_attn.k_proj": (24, 32), "self_attn.v_proj": (24, 32),
                      "self_attn.o_proj": (32, 48), "mlp.gate_proj": (40, 32), "mlp.up_proj": (40, 32),
                      "mlp.down_proj": (32, 40)}
    assert all(isinstance(m.module, torch.nn.Linear) for m in mats)
    assert sum(m.numel for m in mats) == 4 * (48 * 32 + 2 * 24 * 32 + 32 * 48 + 3 * 40 * 32)
    # norms (q_norm, k_norm and the four per-layer norms), embeddings and the tied head stay out
    assert not {n for n, _ in gemma3.named_modules() if "norm" in n or "embed" in n or "lm_head" in n} & {
        m.name for m in mats}


def test_every_fast_path_is_on_and_the_window_is_known(gemma3):
    features = forward_features(gemma3)
    assert features == ForwardFeatures(True, True, CACHE_ARGUMENTS[0], WINDOW, packed_rows=True)
    assert features.lost() == []



def few_shot_task(seed: int, n: int, *, prefix: int, suffix: tuple[int, int], single_token: bool,
                  max_length: int = 64) -> EncodedTask:
    """``n`` examples sharing a ``prefix``-token prompt, each with its own suffix of ``suffix``
    (low, high) tokens and 2-3 choices of 1 token (fast path) or 1-4 tokens."""
    rng = np.random.default_rng(seed)
    shared = tuple(int(t) for t in rng.integers(2, VOCAB, prefix))
    contexts, conts = [], []
    for _ in range(n):
        contexts.append(shared + tuple(int(t) for t in rng.integers(2, VOCAB, rng.integers(*suffix))))
        lens = [1] * int(rng.integers(2, 4)) if single_token else list(rng.integers(1, 5, int(rng.integers(2, 4))))
        conts.append(tuple(tuple(int(t) for t in rng.integers(2, VOCAB, k)) for k in lens))
    return EncodedTask(tuple(contexts), tuple(conts), tuple(0 for _ in contexts), max_length)


@pytest.mark.parametrize("single_token", [True, False], ids=["fast-path", "slow-path"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_scorer_equals_one_unpadded_forward_per_request(gemma3, single_token, padding, naive_scores):
    """Within the window: shared prefix (left padding), batches of mixed lengths."""
    encoded = few_shot_task(1, 9, prefix=16, suffix=(1, 5), single_token=single_token)
    assert max(len(c) for c in encoded.contexts) + 4 <= WINDOW
    reference = naive_scores(gemma3, encoded)
    for batch_size in (1, 4, 9):
        scores = score_examples(gemma3, encoded, batch_size=batch_size, padding=padding)
        np.testing.assert_allclose(np.concatenate(scores.logprobs), np.concatenate(reference), rtol=0, atol=1e-5)
    if padding == "left":  # packed rows: a 4-D mask, which transformers applies to sliding layers as it is
        packed = score_examples(gemma3, encoded, batch_size=9, packing=True)
        np.testing.assert_allclose(np.concatenate(packed.logprobs), np.concatenate(reference), rtol=0, atol=1e-5)


def test_rows_longer_than_the_window_score_exactly(gemma3, monkeypatch, naive_scores):
    """Sequences of 17..40 tokens against a 24-token window. Without the scorer's window rule the
    padding between the shared prefix and a shorter suffix would push prefix keys out of the window
    (transformers masks by cache index, not by position id): shown by switching the rule off."""
    encoded = few_shot_task(2, 8, prefix=16, suffix=(1, 25), single_token=True)
    lengths = sorted(len(c) for c in encoded.contexts)
    assert lengths[0] <= WINDOW < lengths[-1]
    want = np.concatenate(naive_scores(gemma3, encoded))
    for batch_size in (3, 8):
        got = np.concatenate(score_examples(gemma3, encoded, batch_size=batch_size).logprobs)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    with pytest.raises(SieveError, match="packed rows: a sequence is longer than its 24-token sliding attention"):
        score_examples(gemma3, encoded, batch_size=8, packing=True)  # its 4-D mask would not apply the window
    windowless = ForwardFeatures(True, True, CACHE_ARGUMENTS[0], None)
    monkeypatch.setattr(scoring_plan, "forward_features", lambda model: windowless)
    wrong = np.concatenate(score_examples(gemma3, encoded, batch_size=8, forward_cost=None).logprobs)
    assert np.abs(wrong - want).max() > 1e-3


# ---------------------------------------------------------------- the embedded Gemma 3 270M

GEMMA = BUILTIN_MODELS["gemma3-270m"]
GEMMA_INSTALLED = all(importlib.util.find_spec(f.package) is not None for f in (GEMMA.sha256sums, *GEMMA.parts))
real_gemma = pytest.mark.skipif(not GEMMA_INSTALLED, reason=f"gemma3-270m is not installed ({GEMMA.install})")
#: The conftest's stable cache, read at import (before any test swaps ``SIEVE_CACHE`` for a fresh
#: one): the ~90 s conversion happens once per machine, not once per session.
STABLE_CACHE = os.environ["SIEVE_CACHE"]


@pytest.fixture(scope="module")
def gemma_270m():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIEVE_CACHE", STABLE_CACHE)
        return load_model("gemma3-270m")


@pytest.mark.real_model
@real_gemma
def test_gemma3_270m_converts_exactly(gemma_270m):
    """The converted folder has Gemma 3's structure, sieve finds its 126 matrices and every fast path,
    each matrix equals its GGUF tensor dequantised by gguf-py (bit for bit), and its perplexity is a
    language model's."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    model, tok = gemma_270m.model, gemma_270m.tokenizer
    cfg = model.config
    assert type(model).__name__ == "Gemma3ForCausalLM" and gemma_270m.model_id == "gemma3-270m"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size) == (18, 640, 2048, 262144)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.query_pre_attn_scalar) == (4, 1, 256, 256)
    assert cfg.layer_types == (["sliding_attention"] * 5 + ["full_attention"]) * 3 and cfg.sliding_window == 512
    assert {k: v["rope_theta"] for k, v in cfg.rope_parameters.items()} == {"full_attention": 1e6,
                                                                            "sliding_attention": 1e4}
    assert cfg.hidden_activation == "gelu_pytorch_tanh" and cfg.final_logit_softcapping is None
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert float(model.model.embed_tokens.embed_scale) == pytest.approx(640 ** 0.5)
    mats = find_matrices(model)
    assert [m.kind for m in mats] == KINDS * 18
    per_layer = 1024 * 640 + 2 * 256 * 640 + 640 * 1024 + 3 * 2048 * 640
    assert sum(m.numel for m in mats) == 18 * per_layer == 100_270_080
    assert forward_features(model) == ForwardFeatures(True, True, CACHE_ARGUMENTS[0], 512, packed_rows=True)

    ids = tok("The Eiffel Tower is in Paris.\n\nReview: warm, funny and moving.\nSentiment:", return_tensors="pt")
    assert ids["input_ids"][0, 0] == tok.bos_token_id == 2
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIEVE_CACHE", STABLE_CACHE)
        gguf = GEMMA.gguf_path()
    module_of = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                 "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                 "ffn_down": "mlp.down_proj"}
    compared = 0
    for tensor in GGUFReader(str(gguf)).tensors:
        prefix, block, kind = (tensor.name.split(".") + ["", ""])[:3]
        if prefix == "blk" and kind in module_of:
            expected = torch.from_numpy(dequantize(tensor.data, tensor.tensor_type).copy())
            assert torch.equal(model.get_submodule(f"model.layers.{block}.{module_of[kind]}").weight, expected)
            compared += 1
    assert compared == len(mats)

    blocks = token_blocks(GeneralCorpus.load("wikipedia").heldout, tok, 2, 128)
    assert (blocks[:, 0] == tok.bos_token_id).all()
    assert 8 < perplexity(model, blocks, batch_size=2) < 40  # a broken conversion gives hundreds


@pytest.mark.real_model
@real_gemma
def test_gemma3_270m_matches_lm_eval_on_the_builtin_task(gemma_270m, sieve_cache):
    """`lm_eval` on sieve's generated YAML, with HFLM on the real model, scores the first 8 test
    documents as sieve's task loading + scorer do (shared prefix, left padding, logits_to_keep)."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from sieve.data.rotten_tomatoes import materialize_rotten_tomatoes
    from sieve.data.splits import SplitSpec, load_task

    model, tok = gemma_270m.model, gemma_270m.tokenizer
    splits = load_task("rotten_tomatoes", SplitSpec(max_test=None))  # all 2000, in file order
    result = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=8, max_length=2048),
        tasks=["sieve_rotten_tomatoes"],
        task_manager=TaskManager(include_path=str(materialize_rotten_tomatoes().parent), include_defaults=False),
        limit=8, bootstrap_iters=0, log_samples=True,
    )
    samples = result["samples"]["sieve_rotten_tomatoes"]
    theirs = np.array([[r[0] for r in smp["filtered_resps"]] for smp in samples])
    encoded = encode_task(splits.test[:8], tok, 2048)
    assert all(ctx[0] == tok.bos_token_id for ctx in encoded.contexts)
    ours = score_examples(model, encoded, batch_size=8)
    assert [smp["arguments"][0][0] for smp in samples] == [ex.context for ex in splits.test[:8]]
    np.testing.assert_allclose(np.array(ours.logprobs), theirs, rtol=0, atol=1e-4)
    assert choice_metrics(ours)["acc"] == pytest.approx(result["results"]["sieve_rotten_tomatoes"]["acc,none"])
