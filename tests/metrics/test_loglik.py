"""sieve's batched scorer against a naive reference and against lm-eval's HFLM."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from sieve.data.splits import TaskExample
from sieve.errors import SieveError
from sieve.metrics.loglik import (
    ChoiceScores,
    EncodedTask,
    build_jobs,
    encode_task,
    metrics,
    score_examples,
)
from sieve.metrics.perplexity import perplexity

VOCAB = 300  # the conftest tokenizers' vocabulary
MAX_LEN = 24


def tiny_llama(vocab_size: int = VOCAB, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=2048)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(vocab_size: int = VOCAB, seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=512)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def tiny_model(request: pytest.FixtureRequest) -> torch.nn.Module:
    return tiny_llama() if request.param == "llama" else tiny_gpt2()


def random_task(seed: int, n: int, *, single_token: bool, max_length: int = MAX_LEN) -> EncodedTask:
    """Token-level examples: contexts of 1..40 tokens (some longer than max_length, so they
    are truncated), 2-4 choices of 1 token (fast path) or 1-5 tokens (slow path)."""
    rng = np.random.default_rng(seed)
    contexts, conts, golds = [], [], []
    for _ in range(n):
        ctx = tuple(int(t) for t in rng.integers(2, VOCAB, rng.integers(1, 41)))
        k = int(rng.integers(2, 5))
        lens = [1] * k if single_token else [int(x) for x in rng.integers(1, 6, k)]
        contexts.append(ctx[-max_length:])
        conts.append(tuple(tuple(int(t) for t in rng.integers(2, VOCAB, m)) for m in lens))
        golds.append(int(rng.integers(0, k)))
    return EncodedTask(tuple(contexts), tuple(conts), tuple(golds), max_length)



@pytest.mark.parametrize("single_token", [True, False], ids=["fast-path", "slow-path"])
@pytest.mark.parametrize("padding", ["left", "right"])
def test_batched_equals_naive(tiny_model: torch.nn.Module, single_token: bool,
                              padding: str, naive_scores) -> None:
    encoded = random_task(1 if single_token else 2, 12, single_token=single_token)
    reference = naive_scores(tiny_model, encoded)
    for batch_size in (1, 7):
        scores = score_examples(tiny_model, encoded, batch_size=batch_size, padding=padding)
        assert scores.indices == tuple(range(12)) and scores.golds == encoded.golds
        for got, want in zip(scores.logprobs, reference, strict=True):
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_fast_path_runs_one_sequence_per_example() -> None:
    fast = random_task(3, 10, single_token=True)
    slow = random_task(3, 10, single_token=False)
    assert len(build_jobs(fast, range(10))) == 10
    assert len(build_jobs(slow, range(10))) == sum(len(c) for c in slow.continuations)
    model = tiny_llama()
    scores = score_examples(model, fast)
    assert scores.n_tokens == sum(len(c) for c in fast.contexts)
    assert scores.n_tokens == sum(fast.forward_tokens(i) for i in range(10))


def test_indices_select_and_order() -> None:
    encoded = random_task(4, 9, single_token=False)
    model = tiny_gpt2()
    full = score_examples(model, encoded, batch_size=4)
    part = score_examples(model, encoded, indices=[7, 2, 5], batch_size=2)
    assert part.indices == (7, 2, 5) and part.golds == tuple(encoded.golds[i] for i in (7, 2, 5))
    for k, i in enumerate((7, 2, 5)):
        np.testing.assert_allclose(part.logprobs[k], full.logprobs[i], atol=1e-5)


def test_padding_is_invisible_to_each_row() -> None:
    """A short request batched with a long one scores as when alone."""
    model = tiny_llama(seed=3)
    long_ctx = tuple(range(2, 2 + MAX_LEN))
    encoded = EncodedTask(((5, 6), long_ctx), (((7,), (8,)), ((9,), (10,))), (0, 1), MAX_LEN)
    alone = score_examples(model, encoded, indices=[0], batch_size=1)
    for padding in ("left", "right"):
        together = score_examples(model, encoded, batch_size=2, padding=padding)
        np.testing.assert_allclose(together.logprobs[0], alone.logprobs[0], atol=1e-6)


# ---------------------------------------------------------------- agreement with lm-eval


REQUESTS = [
    ("Review: a fine film, warm and funny.\nSentiment:", " positive"),
    ("Review: dull and slow; a waste of time.\nSentiment: ", "negative"),  # space moves
    ("Q: which colour is the sky?\nA:", " blue sky over the sea"),
    ("the quick brown fox jumps over the lazy dog  \n\n", "Review:"),  # trailing newlines
    ("", "the quick brown fox"),  # empty context: prefix token
    ("fox " * 30, "jumps over"),  # longer than max_length: left truncation
]


def hflm_loglikelihood(model: torch.nn.Module, tokenizer: object,
                       requests: list[tuple[str, str]], max_length: int) -> list[float]:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=3, max_length=max_length)
    insts = [Instance(request_type="loglikelihood", doc={}, arguments=r, idx=0)
             for r in requests]
    return [ll for ll, _ in lm.loglikelihood(insts, disable_tqdm=True)]


@pytest.mark.parametrize("kind", ["llama+bos", "gpt2+nobos"])
def test_agrees_with_lm_eval_hflm(kind: str, request: pytest.FixtureRequest) -> None:
    if kind == "llama+bos":
        model, tok = tiny_llama(seed=5), request.getfixturevalue("bos_tokenizer")
    else:
        model, tok = tiny_gpt2(seed=5), request.getfixturevalue("gpt2_style_tokenizer")
    examples = [TaskExample(c, (x,), 0) for c, x in REQUESTS]
    encoded = encode_task(examples, tok, max_length=32)
    ours = score_examples(model, encoded, batch_size=4)
    theirs = hflm_loglikelihood(model, tok, REQUESTS, max_length=32)
    np.testing.assert_allclose([lp[0] for lp in ours.logprobs], theirs, rtol=0, atol=1e-4)
    # multiple choice: the same requests as choices of one example give the same numbers
    mc = encode_task([TaskExample(REQUESTS[0][0], (" positive", " negative"), 1)], tok, 32)
    both = score_examples(model, mc).logprobs[0]
    theirs_mc = hflm_loglikelihood(model, tok, [(REQUESTS[0][0], " positive"),
                                                (REQUESTS[0][0], " negative")], 32)
    np.testing.assert_allclose(both, theirs_mc, atol=1e-4)


def test_encoding_moves_whitespace_and_handles_empty_context(bos_tokenizer: object) -> None:
    tok = bos_tokenizer
    bos = tok.bos_token_id
    enc = encode_task([TaskExample("Sentiment: ", ("negative",), 0),
                       TaskExample("", ("the fox",), 0)], tok, max_length=16)
    assert enc.contexts[0] == tuple(tok("Sentiment:")["input_ids"])
    assert enc.contexts[0][0] == bos  # the tokenizer's own BOS, as HFLM
    assert enc.continuations[0][0] == tuple(tok("Sentiment: negative")["input_ids"])[
        len(enc.contexts[0]):]
    assert enc.contexts[1] == (bos,)
    assert enc.continuations[1][0] == tuple(tok("the fox", add_special_tokens=False)["input_ids"])
    truncated = encode_task([TaskExample("fox " * 40, (" jumps",), 0)], tok, max_length=8)
    assert len(truncated.contexts[0]) == 8


@pytest.mark.real_model
def test_real_tokenizer_matches_hflm(smollm2_tokenizer: object, sieve_cache: Path) -> None:
    """The SmolLM2 tokenizer on built-in rotten tomatoes prompts, with a random tiny model."""
    from sieve.data.splits import SplitSpec, load_task

    tok = smollm2_tokenizer
    splits = load_task("rotten_tomatoes", SplitSpec(max_validation=4, max_calibration=1, max_test=1))
    examples = list(splits.validation)
    encoded = encode_task(examples, tok, max_length=2048)
    assert all(encoded.single_token(i) for i in range(len(examples)))  # fast path applies
    assert encoded.continuations[0] == ((tok.encode(" negative")[0],),
                                        (tok.encode(" positive")[0],))
    model = tiny_llama(vocab_size=len(tok), seed=7)
    ours = score_examples(model, encoded, batch_size=3)
    requests = [(ex.context, c) for ex in examples for c in ex.continuations]
    theirs = hflm_loglikelihood(model, tok, requests, max_length=2048)
    np.testing.assert_allclose(np.concatenate(ours.logprobs), theirs, atol=1e-4)


@pytest.mark.real_model
def test_builtin_task_matches_lm_eval_simple_evaluate(smollm2_tokenizer: object,
                                                      sieve_cache: Path) -> None:
    """End to end: `lm_eval` on sieve's generated YAML scores the first test documents exactly
    as sieve's own task loading + scorer do."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from sieve.data.rotten_tomatoes import materialize_rotten_tomatoes
    from sieve.data.splits import SplitSpec, load_task

    tok = smollm2_tokenizer
    model = tiny_llama(vocab_size=len(tok), seed=11)
    splits = load_task("rotten_tomatoes", SplitSpec(max_test=None))  # all 2000, in file order
    yaml_dir = materialize_rotten_tomatoes().parent
    result = simple_evaluate(
        model=HFLM(pretrained=model, tokenizer=tok, batch_size=8, max_length=2048),
        tasks=["sieve_rotten_tomatoes"],
        task_manager=TaskManager(include_path=str(yaml_dir), include_defaults=False),
        limit=8, bootstrap_iters=0, log_samples=True,
    )
    samples = result["samples"]["sieve_rotten_tomatoes"]
    theirs = np.array([[r[0] for r in smp["filtered_resps"]] for smp in samples])
    ours = score_examples(model, encode_task(splits.test[:8], tok, 2048))
    assert [smp["arguments"][0][0] for smp in samples] == [ex.context for ex in splits.test[:8]]
    np.testing.assert_allclose(np.array(ours.logprobs), theirs, atol=1e-4)
    lm_acc = result["results"]["sieve_rotten_tomatoes"]["acc,none"]
    assert metrics(ours)["acc"] == pytest.approx(lm_acc)


# ---------------------------------------------------------------- metrics and perplexity


def test_metrics_by_hand() -> None:
    scores = ChoiceScores(
        logprobs=[np.array([-1.0, -2.0]), np.array([-3.0, -1.0]), np.array([-2.0, -2.0]),
                  np.array([-4.0])],
        greedy=[np.array([False, False]), np.array([False, True]), np.array([True, True]),
                np.array([True])],
        indices=(0, 1, 2, 3), golds=(0, 0, 1, 0), n_tokens=10)
    m = metrics(scores)
    # acc: right, wrong, tie -> index 0 -> wrong, single continuation -> greedy -> right
    assert m["acc"] == pytest.approx(0.5)
    assert m["nll"] == pytest.approx((1 + 3 + 2 + 4) / 4)
    want = [math.log(1 + math.exp(-1)), math.log(1 + math.exp(2)), math.log(2), 0.0]
    assert m["choice_nll"] == pytest.approx(np.mean(want))
    assert m["n"] == 4
    flipped = metrics(scores, golds=[1, 1, 0, 0])
    assert flipped["acc"] == pytest.approx(0.75)
    with pytest.raises(SieveError, match="golds for"):
        metrics(scores, golds=[0])


def test_uniform_model_has_log_n_choice_nll() -> None:
    encoded = random_task(6, 5, single_token=True)
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # every token equally likely
    m = metrics(score_examples(model, encoded))
    want = np.mean([math.log(len(c)) for c in encoded.continuations])
    assert m["choice_nll"] == pytest.approx(want, abs=1e-6)
    assert m["nll"] == pytest.approx(math.log(VOCAB), abs=1e-5)


def test_perplexity_matches_model_loss() -> None:
    model = tiny_gpt2(seed=2)
    blocks = torch.randint(0, VOCAB, (5, 17), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        losses = [float(model(blocks[i:i + 1], labels=blocks[i:i + 1]).loss) for i in range(5)]
    want = math.exp(np.mean(losses))  # equal-length blocks: mean of means = global mean
    assert perplexity(model, blocks, batch_size=2) == pytest.approx(want, rel=1e-5)
    assert perplexity(model, blocks, batch_size=5) == pytest.approx(want, rel=1e-5)
    with pytest.raises(SieveError, match="token_blocks"):
        perplexity(model, blocks[:, :1])


def test_bad_inputs_raise_sieve_error(gpt2_style_tokenizer: object) -> None:
    tok = gpt2_style_tokenizer
    with pytest.raises(SieveError, match="gold 3"):
        encode_task([TaskExample("Q:", (" a", " b"), 3)], tok, 16)
    with pytest.raises(SieveError, match="encodes to no tokens"):
        encode_task([TaskExample("Q:", ("",), 0)], tok, 16)
    with pytest.raises(SieveError, match="more than max_length"):
        encode_task([TaskExample("Q:", (" fox" * 20,), 0)], tok, 4)
    encoded = encode_task([TaskExample("Q:", (" a", " b"), 0)], tok, 16)
    with pytest.raises(SieveError, match="out of range"):
        score_examples(tiny_gpt2(), encoded, indices=[1])
    with pytest.raises(SieveError, match="batch_size"):
        score_examples(tiny_gpt2(), encoded, batch_size=0)
