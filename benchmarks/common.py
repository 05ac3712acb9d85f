"""Shared pieces of the benchmark scripts: provenance and tiny smoke fixtures."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0).replace(" ", "-")
    return f"cpu-{platform.machine()}"


def provenance() -> dict[str, Any]:
    import transformers

    commit = os.environ.get("SIEVE_COMMIT", "")
    try:
        commit = commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "date": date.today().isoformat(),
        "device": device_name(),
        "gpus": torch.cuda.device_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "commit": commit,
    }


def write_result(kind: str, body: dict[str, Any], out_dir: Path, tag: str = "") -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"-{tag}" if tag else ""
    path = out_dir / f"{kind}-{body['date']}-{body['device']}{suffix}.json"
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def smoke_inputs(root: Path) -> dict[str, str]:
    """A tiny random Llama folder, a tiny JSONL lm-eval task and a tiny corpus (seconds to build)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    words = "the film was warm funny dull slow great awful story plot music good bad fine boring".split()
    sentences = [" ".join(words[int(i)] for i in torch.randint(0, len(words), (6,), generator=g)) for _ in range(300)]
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(sentences, trainers.BpeTrainer(vocab_size=160, special_tokens=["<eos>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    for split, lo, hi in (("train", 0, 60), ("validation", 60, 90), ("test", 90, 120)):
        rows = [{"text": s, "label": i % 2} for i, s in enumerate(sentences[lo:hi])]
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "task.yaml").write_text(
        "task: smoke_sentiment\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    train: {root / 'train.jsonl'}\n    validation: {root / 'validation.jsonl'}\n    test: {root / 'test.jsonl'}\n"
        "output_type: multiple_choice\ntraining_split: train\nvalidation_split: validation\ntest_split: test\n"
        'doc_to_text: "Review: {{text}}\\nSentiment:"\ndoc_to_choice: ["negative", "positive"]\ndoc_to_target: label\n'
        "num_fewshot: 0\nmetric_list:\n  - metric: acc\n"
    )
    (root / "general.txt").write_text("\n\n".join(sentences[120:]))
    return {"model": str(root / "model"), "task": str(root / "task.yaml"), "general": str(root / "general.txt")}


def bench_device(smoke: bool) -> torch.device:
    """The GPU when there is one, except for ``--smoke`` runs, which always take the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_timer(model, ids: torch.Tensor, device: torch.device):
    """A function timing one inference forward of ``ids`` (logits of the last position only)."""
    def forward() -> float:
        sync(device)
        start = time.perf_counter()
        with torch.inference_mode():
            model(input_ids=ids, use_cache=False, logits_to_keep=1)
        sync(device)
        return time.perf_counter() - start

    return forward
