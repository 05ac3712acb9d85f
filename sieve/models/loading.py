"""Model loading: built-in models, local folders, GGUF files and hub names, all offline-friendly.

The built-in models' GGUF files come from PyPI data packages (:mod:`sieve.models.sources`).
Loading a GGUF dequantises it (~15 s for SmolLM2, ~50 s for Gemma's 262k-token vocabulary on 2
cores), and ``save_pretrained`` refuses a GGUF-loaded model, so the first load rebuilds the model
from its config (without the quantisation entry), copies the state dict in and saves a plain
safetensors folder under ``$SIEVE_CACHE/models/``; later loads read that folder. The folder's name
carries a key of the sieve version, :data:`CONVERSION_REVISION`, the transformers version (its GGUF
reader decides the config) and the source's identity, so a changed converter never reuses a stale
folder silently; it converts again instead.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sieve import __version__
from sieve.errors import SieveError
from sieve.io import file_digest
from sieve.models.sources import BUILTIN_MODELS
from sieve.resources import cache_dir

log = logging.getLogger(__name__)

#: Bump when :func:`_convert_gguf` writes something different for the same GGUF file (1 was the
#: unkeyed ``models/<name>`` folder of sieve before built-in sources were checksummed).
CONVERSION_REVISION = 2


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    model_id: str
    streamer: object | None = None  # a BlockStreamer when decoder blocks are streamed from host memory


#: Token ids and text the converted folder is checked on before it is put in place.
_CHECK_TEXT = "The quick brown fox jumps over the lazy dog.\n\nReview: a warm, funny film."


def _conversion_key(identity: str) -> str:
    """Short hash of what a converted folder depends on (see the module docstring)."""
    text = "\n".join([__version__, str(CONVERSION_REVISION), importlib.metadata.version("transformers"), identity])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _convert_gguf(gguf_path: Path, out_dir: Path, provenance: dict[str, object]) -> Path:
    """Dequantise ``gguf_path`` into a safetensors folder ``out_dir`` (atomic: temp folder + rename).

    The GGUF is parsed twice (model, tokenizer), not three times: the config is the loaded model's
    own, which matters for Gemma, whose 262k-token vocabulary makes every parse take ~20 s. Before
    the folder is renamed into place it is loaded back and must reproduce the GGUF-loaded model's
    logits and token ids: buffers that are not saved (Gemma's embedding scale, rotary frequencies)
    and config fields that do not survive ``save_pretrained`` would otherwise go unnoticed.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to safetensors in %s (once)", gguf_path.name, out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "sieve_conversion.json").write_text(json.dumps(
            {**provenance, "gguf": name, "sieve": __version__, "conversion_revision": CONVERSION_REVISION,
             "transformers": importlib.metadata.version("transformers")}, indent=1) + "\n")
        del model
        _check_conversion(loaded, tokenizer, tmp)
        try:
            tmp.rename(out_dir)
        except OSError:  # another process converted it meanwhile: keep theirs
            if not (out_dir / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@torch.inference_mode()
def _check_conversion(loaded: nn.Module, tokenizer: object, folder: Path) -> None:
    """The saved folder must tokenise and predict like the GGUF-loaded model (float32 tolerance)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ids = tokenizer(_CHECK_TEXT)["input_ids"]
    reloaded_ids = AutoTokenizer.from_pretrained(folder)(_CHECK_TEXT)["input_ids"]
    if list(reloaded_ids) != list(ids):
        raise SieveError(f"converting the GGUF changed its tokenizer ({ids[:8]}… → {reloaded_ids[:8]}…) with "
                         f"transformers {importlib.metadata.version('transformers')}")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tokens = torch.tensor([ids])
    diff = float((loaded(input_ids=tokens).logits - reloaded(input_ids=tokens).logits).abs().max())
    log.info("converted folder reproduces the GGUF logits (max abs diff %.2e)", diff)
    if not diff <= 1e-3:
        raise SieveError(f"the converted model's logits differ from the GGUF's by {diff:.3g} with transformers "
                         f"{importlib.metadata.version('transformers')}; conversion is not exact")


def resolve_model_path(spec: str) -> tuple[str, str | None]:
    """``(path_or_hub_name, model_id)`` for a model spec; converts GGUF files once."""
    if spec in BUILTIN_MODELS:
        source = BUILTIN_MODELS[spec]
        identity = source.identity()
        target = cache_dir() / "models" / f"{spec}-{_conversion_key(identity)}"
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(source.gguf_path(), target, {"model": spec, "source": identity})
        return str(target), spec
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SieveError(f"model file {spec} does not exist")
        digest = file_digest(path)
        target = cache_dir() / "models" / f"{path.stem}-{digest}-{_conversion_key(digest)}"
        if not (target / "config.json").exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(path, target, {"source": str(path.resolve()), "sha256_16": digest})
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
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise SieveError(f"cannot load model {spec!r}: its tokenizer has {len(tokenizer)} tokens but the model's "
                         f"embedding only {rows} rows (a tokenizer from another model?)")
    model.eval().to(device)
    if model_id is None:
        model_id = getattr(model.config, "_name_or_path", None) or Path(path).name
        saved = Path(path) / "sieve_model_id"
        model_id = saved.read_text().strip() if saved.exists() else model_id
    return LoadedModel(model=model, tokenizer=tokenizer, model_id=str(model_id))
