"""Shared fixtures: tiny random models, a tiny tokenizer, a tiny lm-eval task, a tiny corpus.

Everything is built in-process (no hub): a byte-level BPE tokenizer trained on a few sentences,
Llama and GPT-2 models from small configs, and a local-JSONL multiple-choice task YAML. Tests that
need the embedded SmolLM2 weights are marked ``real_model`` and skip when the package is missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One stable cache across test sessions: the SmolLM2 conversion (~40 s) happens once per machine,
# and statistics are content-addressed (fingerprinted), so reuse is exact. Tests that must see a
# fresh cache use the ``sieve_cache`` fixture.
os.environ.setdefault("SIEVE_CACHE", str(Path.home() / ".cache" / "sieve-test"))
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

WORDS = (
    "the film was warm funny dull slow great awful story actors plot music scene long short "
    "good bad fine boring moving brilliant weak strong a an and of to in is it this that with"
).split()


def _sentences(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(4, 10, (1,), generator=g))
        out.append(" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (k,), generator=g)))
    return out


@pytest.fixture(scope="session")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(_sentences(200, 0) + ["Review: x\nSentiment: positive negative"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")


def tiny_llama(vocab: int = 200, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(vocab: int = 200, layers: int = 2, seed: int = 0) -> torch.nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=32, n_layer=layers, n_head=4, n_positions=512)
    return GPT2LMHeadModel(cfg).eval()


def tiny_gemma3(vocab: int = 300, window: int = 24, seed: int = 0) -> torch.nn.Module:
    """4 layers (sliding, sliding, full, sliding) with different RoPE bases per layer type, 4 query
    heads of 12 over 2 KV heads (every projection has its own shape), random norm weights (a model
    that skipped its q/k norms would give other logits)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=40, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=12, query_pre_attn_scalar=16, sliding_window=window,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=256, rope_theta=1000.0, rope_local_base_freq=100.0,
    )
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.5)
    return model


@pytest.fixture
def gemma3():
    return tiny_gemma3()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture(scope="session")
def tiny_model_dir(tokenizer, tmp_path_factory) -> Path:
    """A tiny random Llama saved as a plain HF folder (safetensors + tokenizer)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(vocab=len(tokenizer), layers=2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_task(tmp_path_factory) -> Path:
    """A local-JSONL multiple-choice lm-eval task (positive/negative), as a YAML path."""
    root = tmp_path_factory.mktemp("tiny-task")
    for split, n, seed in (("train", 40, 1), ("validation", 24, 2), ("test", 24, 3)):
        rows = [{"text": s, "label": i % 2} for i, s in enumerate(_sentences(n, seed))]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml_text = f"""task: tiny_sentiment
dataset_path: json
dataset_kwargs:
  data_files:
    train: {root / 'train.jsonl'}
    validation: {root / 'validation.jsonl'}
    test: {root / 'test.jsonl'}
output_type: multiple_choice
training_split: train
validation_split: validation
test_split: test
doc_to_text: "Review: {{{{text}}}}\\nSentiment:"
doc_to_choice: ["negative", "positive"]
doc_to_target: label
num_fewshot: 0
metric_list:
  - metric: acc
"""
    path = root / "tiny_sentiment.yaml"
    path.write_text(yaml_text)
    return path


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-corpus") / "general.txt"
    path.write_text("\n\n".join(_sentences(300, 7)))
    return path


@pytest.fixture(scope="session")
def sieve_cache(tmp_path_factory):
    """A fresh ``$SIEVE_CACHE`` for the session (the built-in task materialises there); converted
    models and assembled GGUFs stay shared with the stable test cache, so nothing is converted twice."""
    path = tmp_path_factory.mktemp("sieve-cache")
    stable = Path(os.environ["SIEVE_CACHE"])
    for shared in ("models", "gguf"):
        (stable / shared).mkdir(parents=True, exist_ok=True)
        (path / shared).symlink_to(stable / shared, target_is_directory=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIEVE_CACHE", str(path))
        yield path


TINY_SEARCH = dict(
    budget=0.5, generations=3, offspring=4, population=3, seed=0, validation_examples=12, stages=[4], promote=[2],
    batch_size=8, device="cpu", calibration=dict(general_blocks=4, block_len=32, task_examples=8, batch_size=4),
    evaluation=dict(test_examples=8, ppl_blocks=2, block_len=32),
)


@pytest.fixture(scope="session")
def search_config(tiny_model_dir, tiny_task, tiny_corpus):
    """``search_config(**changes)``: a SearchConfig on the tiny model, task and corpus (seconds to run)."""
    from sieve.config import validate
    from sieve.search.config import SearchConfig

    def make(**changes):
        base = dict(TINY_SEARCH, model=str(tiny_model_dir), task=str(tiny_task), general=str(tiny_corpus))
        return validate(SearchConfig, {**base, **changes})

    return make


@pytest.fixture(scope="session")
def feasible_genomes():
    """``feasible_genomes(prepared, n, seed=0)``: ``n`` random genomes of a prepared search, repaired
    into its budget window (what a generation's offspring look like)."""
    from sieve.search.operators import repair_budget

    def make(prepared, n: int, seed: int = 0) -> list[np.ndarray]:
        space, rng = prepared.space, np.random.default_rng(seed)
        return [repair_budget(rng.integers(space.lower, space.upper + 1), space.costs, prepared.window, rng) for _ in range(n)]

    return make


@pytest.fixture(scope="session")
def run_search():
    """``run_search(config, path, **execute_options)`` starts a search; ``run_search(None, path,
    overrides={...})`` resumes one. Returns the outcome (``results.json``)."""
    from sieve.search.run import SearchRun
    from sieve.search.rundir import RunDir

    def run(config, path, *, overrides=None, **options):
        runner = SearchRun(RunDir(path), config) if config is not None else SearchRun(RunDir(path), overrides=overrides)
        return runner.execute(**options)

    return run


@pytest.fixture(scope="session")
def finished_run(search_config, run_search, tmp_path_factory) -> Path:
    """A finished two-generation per_matrix search (fused scores, final report) on the tiny Llama.
    Read it, or copy it before changing anything (``copy_run``)."""
    path = tmp_path_factory.mktemp("runs") / "tiny"
    run_search(search_config(generations=2), path, report=True)
    return path


@pytest.fixture
def copy_run(finished_run, tmp_path):
    """``copy_run()``: a private copy of the finished run."""
    import shutil

    def copy(name: str = "run") -> Path:
        return Path(shutil.copytree(finished_run, tmp_path / name))

    return copy


def _naive_scores(model: torch.nn.Module, encoded) -> list[np.ndarray]:
    """One unpadded forward per (example, choice), HFLM's input: log_softmax + gather."""
    out = []
    with torch.inference_mode():
        for ctx, conts in zip(encoded.contexts, encoded.continuations, strict=True):
            row = []
            for cont in conts:
                inp = (list(ctx) + list(cont))[-(encoded.max_length + 1):][:-1]
                lp = torch.log_softmax(model(torch.tensor([inp])).logits[0].double(), -1)[len(inp) - len(cont):]
                row.append(float(lp.gather(-1, torch.tensor(cont)[:, None]).sum()))
            out.append(np.array(row))
    return out


@pytest.fixture(scope="session")
def naive_scores():
    """The reference every batched scorer is compared with: one unpadded forward per request."""
    return _naive_scores
