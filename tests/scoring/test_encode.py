"""Encoding a task as lm-eval's HFLM does: its tokens, and scores equal to HFLM's own on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sieve.data.splits import TaskExample
from sieve.errors import SieveError
from sieve.scoring.encode import encode_task
from sieve.scoring.plan import score_examples
from sieve.scoring.results import choice_metrics

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
def test_agrees_with_lm_eval_hflm(kind: str, request: pytest.FixtureRequest, tiny_lm) -> None:
    if kind == "llama+bos":
        model, tok = tiny_lm("llama", seed=5), request.getfixturevalue("bos_tokenizer")
    else:
        model, tok = tiny_lm("gpt2", seed=5), request.getfixturevalue("gpt2_style_tokenizer")
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
def test_real_tokenizer_matches_hflm(smollm2_tokenizer: object, sieve_cache: Path, tiny_lm) -> None:
    """The SmolLM2 tokenizer on built-in rotten tomatoes prompts, with a random tiny model."""
    from sieve.data.splits import SplitSpec, load_task

    tok = smollm2_tokenizer
    splits = load_task("rotten_tomatoes", SplitSpec(max_validation=4, max_calibration=1, max_test=1))
    examples = list(splits.validation)
    encoded = encode_task(examples, tok, max_length=2048)
    assert all(encoded.single_token(i) for i in range(len(examples)))  # fast path applies
    assert encoded.continuations[0] == ((tok.encode(" negative")[0],),
                                        (tok.encode(" positive")[0],))
    model = tiny_lm(vocab_size=len(tok), seed=7)
    ours = score_examples(model, encoded, batch_size=3)
    requests = [(ex.context, c) for ex in examples for c in ex.continuations]
    theirs = hflm_loglikelihood(model, tok, requests, max_length=2048)
    np.testing.assert_allclose(np.concatenate(ours.logprobs), theirs, atol=1e-4)


@pytest.mark.real_model
def test_builtin_task_matches_lm_eval_simple_evaluate(smollm2_tokenizer: object,
                                                      sieve_cache: Path, tiny_lm) -> None:
    """End to end: `lm_eval` on sieve's generated YAML scores the first test documents exactly
    as sieve's own task loading + scorer do."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from sieve.data.rotten_tomatoes import materialize_rotten_tomatoes
    from sieve.data.splits import SplitSpec, load_task

    tok = smollm2_tokenizer
    model = tiny_lm(vocab_size=len(tok), seed=11)
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
    assert choice_metrics(ours)["acc"] == pytest.approx(lm_acc)


def test_bad_inputs_raise_sieve_error(gpt2_style_tokenizer: object) -> None:
    tok = gpt2_style_tokenizer
    with pytest.raises(SieveError, match="gold 3"):
        encode_task([TaskExample("Q:", (" a", " b"), 3)], tok, 16)
    with pytest.raises(SieveError, match="encodes to no tokens"):
        encode_task([TaskExample("Q:", ("",), 0)], tok, 16)
    with pytest.raises(SieveError, match="more than max_length"):
        encode_task([TaskExample("Q:", (" fox" * 20,), 0)], tok, 4)
