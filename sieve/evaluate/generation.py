"""Greedy generation and throughput timers that treat a dense and a pruned model exactly the same way.

Why a module of its own: sieve's pruned models (fewer decoder blocks, or
:class:`~sieve.models.factorized.FactorizedLinear` matrices that run two GEMMs instead of one) are
smaller dense models, but eager transformers decodes launch-bound: at batch 1 an 8B model issues
~30 small kernels per block per token and reaches about a tenth of the speed its bytes allow, so an
eager comparison mostly measures Python and kernel-launch overhead, which removing parameters barely
changes. A deployment comparison must therefore also run the *compiled* decode a server would run,
and every model of a comparison must go through the same code path.

Two paths, one entry point (:func:`greedy_generate`):

* **eager** — ``model.generate(do_sample=False)`` with the default dynamic KV cache
  (``cache_implementation="dynamic"``, ``disable_compile=True`` so that a hub generation config
  asking for a static cache cannot switch compilation on behind the caller's back);
* **compiled** — by default sieve's :class:`StaticDecoder` (``CompileSettings.driver="loop"``):
  the static-cache loop transformers documents (an eager prefill into a ``StaticCache`` allocated
  at its final length, then one ``torch.compile``-d step per token), with the forward, the
  end-of-sequence mask and the argmax inside the one compiled step, so that between tokens only the
  next token's copy and a position increment run in Python. ``driver="generate"`` is transformers'
  own route instead, ``generate(cache_implementation="static", compile_config=CompileConfig(...))``,
  which compiles ``model.__call__`` for the decode steps and keeps its per-step input preparation,
  logits processors and stopping check in Python; ``generate`` decides to compile in
  ``_valid_auto_compile_criteria`` (a compileable, non-dynamic cache, and CUDA/XPU/TPU — or the
  ``CompileConfig``'s ``_compile_all_devices`` flag, which transformers keeps for tests and which
  this module sets on the CPU). On CUDA the mode is ``"reduce-overhead"`` (inductor kernels replayed
  as CUDA graphs) in both.

Both paths stop on token count only: ``min_new_tokens = max_new_tokens`` masks the end-of-sequence
logit until the last step (identically in both paths), so timings always compare the same number of
tokens. The attention mask defaults to all ones: ``generate`` would otherwise *infer* one from the
pad token, masking random prompt tokens that happen to equal it.

Compiled state is global. Dynamo keeps compiled graphs per *code object* (``Module.__call__`` is
shared by every model) and, past ``torch._dynamo.config.recompile_limit`` (8) graphs, silently falls
back to eager. Each (model, batch shape) is one graph here (``dynamic=False``: kernels specialised
to the shape), so a comparison of several models would hit the limit. :func:`greedy_generate`
therefore keeps the compiled graphs of one model at a time — it calls :func:`reset_compiled` when
a different model comes — and turns the silent fallback into an error
(``fail_on_recompile_limit_hit``) while it generates.

Timers: decode tokens/s = ``batch · new_tokens / t`` with ``t`` the median wall time of whole greedy
generations after warm-up runs (the first compiled run compiles, the next records the CUDA graph),
synchronised on CUDA. ``t`` includes the (eager) prefill of the short prompt, as a server's time
per request does. Prefill tokens/s = ``batch · seq_len / t`` for one forward without cache,
computing the logits of the last position only when the model honours ``logits_to_keep``.

Measured (one H200, torch 2.11, transformers 5.17, random bf16 Llama-8B, 128 new tokens, batch 1):
``generate``'s compiled route ran 148 tokens/s (6.8 ms/token); this loop with each step's cache
position built on the host (``torch.tensor([p], device="cuda")``, a blocking copy that made the host
wait for the previous token) 160 (6.3 ms); with every position on the device, as now, 177 (5.5 ms),
eager 32–39; reading 16 GB per token at 4.8 TB/s would allow ~3.3 ms. With 8 of 32 blocks removed
(bytes 0.78×) the loop's batch-1 speed-up went from 1.17× (host positions) to 1.28× (device
positions); 1.31× at batch 32. Eager batch-1 figures follow the host's single thread and varied by
±30 % between identical runs.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import math
import statistics
import time
import weakref
from collections.abc import Iterator
from typing import Any, Literal

import torch

from sieve.config import Frozen
from sieve.errors import SieveError
from sieve.models.forward import evaluating

log = logging.getLogger(__name__)

#: median of this many timed runs (after warm-up)
REPEATS = 3
#: untimed runs first: eager warms allocator and kernels; compiled compiles, then records the CUDA graph
WARMUP_EAGER, WARMUP_COMPILED = 1, 2


class CompileSettings(Frozen):
    """How the compiled path compiles the decode step (``torch.compile`` arguments).

    ``mode=None`` means ``"reduce-overhead"`` (CUDA graphs) on CUDA and inductor's default mode
    elsewhere (CUDA graphs do not exist there). ``dynamic=False`` specialises the kernels to each
    batch shape (one compile per model and batch size, the fastest kernels). ``fullgraph=True``
    makes a graph break an error instead of splitting the step into several graphs (which would
    re-introduce launches between them). Tests on the CPU use ``backend="aot_eager"``: the same
    tracing and static-cache path in seconds, without inductor's C++ build (~35 s for a 2-block model).
    """

    backend: str = "inductor"
    mode: str | None = None
    fullgraph: bool = True
    dynamic: bool | None = False
    driver: Literal["loop", "generate"] = "loop"

    def compile_mode(self, device: torch.device) -> str | None:
        """``mode``, or for inductor ``"reduce-overhead"`` (CUDA graphs) on CUDA and ``"default"`` elsewhere."""
        if self.mode is None and self.backend == "inductor":
            return "reduce-overhead" if device.type == "cuda" else "default"
        return self.mode

    def compile_config(self, device: torch.device) -> Any:
        """transformers' :class:`~transformers.CompileConfig` for ``device``."""
        from transformers import CompileConfig

        config = CompileConfig(fullgraph=self.fullgraph, dynamic=self.dynamic, backend=self.backend,
                               mode=self.compile_mode(device))
        if device.type not in ("cuda", "xpu"):
            # generate compiles only on accelerators unless this (test) flag is set on the instance
            config._compile_all_devices = True
        return config


_COMPILED_FOR: weakref.ref | None = None


def reset_compiled() -> None:
    """Forget every compiled graph (and, on CUDA, the CUDA-graph memory pools): ``torch._dynamo.reset``;
    and stop inductor's pool of compile workers. Idle, those processes still took about half a core
    on the H200 machine, and eager batch-1 decode is bound by the host's single thread: timings of
    a model measured after another one's compilation would otherwise be biased (the pool restarts
    on the next compile, a few seconds)."""
    global _COMPILED_FOR
    torch._dynamo.reset()
    _COMPILED_FOR = None
    _DECODERS.clear()
    try:
        from torch._inductor.async_compile import shutdown_compile_workers
    except ImportError:  # an older or newer torch without it: nothing to stop
        return
    shutdown_compile_workers()


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _pad_token_id(model: torch.nn.Module) -> int:
    """The pad id generate needs when no tokenizer is around: the config's pad, else its eos, else 0."""
    for source in (getattr(model, "generation_config", None), model.config):
        for name in ("pad_token_id", "eos_token_id"):
            value = getattr(source, name, None)
            if isinstance(value, (list, tuple)):
                value = value[0] if value else None
            if isinstance(value, int):
                return value
    return 0


@contextlib.contextmanager
def _no_silent_fallback() -> Iterator[None]:
    """Past the recompile limit dynamo runs eager without a word; make that an error here."""
    config = torch._dynamo.config
    name = "fail_on_recompile_limit_hit" if hasattr(config, "fail_on_recompile_limit_hit") else "fail_on_cache_limit_hit"
    with config.patch(**{name: True}):
        yield


def _own_compiled_state(model: torch.nn.Module) -> None:
    """Keep the compiled graphs of ``model`` only (see the module docstring)."""
    global _COMPILED_FOR
    if _COMPILED_FOR is not None and _COMPILED_FOR() is not model:
        log.info("another model is compiled; resetting dynamo before compiling %s", type(model).__name__)
        reset_compiled()
    _COMPILED_FOR = weakref.ref(model)


def _eos_ids(model: torch.nn.Module) -> list[int]:
    """The end-of-sequence ids ``generate``'s ``min_new_tokens`` masks (the generation config's, else the config's)."""
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            return [value] if isinstance(value, int) else list(value)
    return []


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward's name for the KV cache: ``cache`` in newer transformers, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _decode_step(model: torch.nn.Module, cache: Any, token: torch.Tensor, position: torch.Tensor,
                 cache_position: torch.Tensor, mask: torch.Tensor, suppressed: torch.Tensor,
                 cache_argument: str) -> torch.Tensor:
    """One greedy decode step over a static cache: ``argmax`` of the last logits, ``suppressed`` ids at −∞."""
    logits = model(input_ids=token, attention_mask=mask, position_ids=position, cache_position=cache_position,
                   use_cache=True, **{cache_argument: cache}).logits[:, -1]
    return logits.index_fill(-1, suppressed, -math.inf).argmax(-1)


class StaticDecoder:
    """Greedy decoding of one model with a static KV cache and one compiled step per token.

    The loop is the one transformers documents for static caches (``StaticCache`` + a compiled
    ``decode_one_tokens``): an eager prefill writes the prompt into a cache allocated at its final
    length ``prompt + new``, then each token is one call of :func:`_decode_step` compiled with
    ``torch.compile`` — the forward, the end-of-sequence mask and the argmax in one graph (one CUDA
    graph replay per token under ``"reduce-overhead"``). Every input has the same shape at every
    step: the token ``(b, 1)``, its positions ``(b, 1)``, the cache position ``(1,)`` and the
    padding mask over the whole cache ``(b, prompt + new)`` (future entries 1; causality masks them).
    Between steps only the next token, a position increment and the copy of the output out of the
    graph's buffer are queued, all on the device — nothing waits for the GPU until the end (a cache
    position built on the host each step would be a blocking host-to-device copy per token) — and
    none of ``generate``'s per-step input preparation, logits processors or stopping checks runs. Caches are kept per ``(batch, length)`` and reset before reuse,
    so their tensors keep the addresses the CUDA graphs were recorded with.
    """

    def __init__(self, model: torch.nn.Module, settings: CompileSettings) -> None:
        self.model, self.settings = model, settings
        device = model_device(model)
        self.step = torch.compile(_decode_step, backend=settings.backend, mode=settings.compile_mode(device),
                                  fullgraph=settings.fullgraph, dynamic=settings.dynamic)
        self.suppressed = torch.tensor(_eos_ids(model), dtype=torch.long, device=device)
        self.caches: dict[tuple[int, int], Any] = {}
        self.cache_argument = _cache_argument(model)

    def cache(self, batch: int, length: int) -> Any:
        from transformers import StaticCache

        key = (batch, length)
        if key not in self.caches:
            self.caches[key] = StaticCache(config=self.model.config, max_cache_len=length)
        else:
            self.caches[key].reset()
        return self.caches[key]

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, mask: torch.Tensor, new_tokens: int) -> torch.Tensor:
        batch, prompt = input_ids.shape
        length = prompt + new_tokens
        cache = self.cache(batch, length)
        full_mask = torch.ones(batch, length, dtype=mask.dtype, device=mask.device)
        full_mask[:, :prompt] = mask
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        with evaluating(self.model):
            logits = self.model(input_ids=input_ids, attention_mask=full_mask, position_ids=positions,
                                cache_position=torch.arange(prompt, device=input_ids.device), use_cache=True,
                                **{self.cache_argument: cache}).logits[:, -1]
            token = logits.index_fill(-1, self.suppressed, -math.inf).argmax(-1)
            out = torch.empty(batch, new_tokens, dtype=torch.long, device=input_ids.device)
            out[:, 0] = token
            position = positions[:, -1:] + 1
            steps = torch.arange(prompt, length, device=input_ids.device)  # on the device: no host copy per token
            for i in range(1, new_tokens):
                token = self.step(self.model, cache, out[:, i - 1:i], position, steps[i - 1:i], full_mask,
                                  self.suppressed, self.cache_argument)
                out[:, i] = token
                position = position + 1
        return out


_DECODERS: weakref.WeakKeyDictionary[torch.nn.Module, StaticDecoder] = weakref.WeakKeyDictionary()


def greedy_generate(model: torch.nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *, compiled: bool,
                    attention_mask: torch.Tensor | None = None,
                    settings: CompileSettings | None = None) -> torch.Tensor:
    """The ``(batch, max_new_tokens)`` greedy continuation of ``input_ids``, exactly ``max_new_tokens``
    long (end-of-sequence masked until the last step), eager with a dynamic cache or with a static
    cache and a compiled decode step (``compiled``; ``settings`` say how). ``attention_mask``
    defaults to all ones."""
    if max_new_tokens < 1:
        raise SieveError(f"max_new_tokens must be at least 1 (got {max_new_tokens})")
    device = model_device(model)
    input_ids = input_ids.to(device)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    kwargs: dict[str, Any] = dict(attention_mask=mask, max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=1, pad_token_id=_pad_token_id(model))
    if not compiled:
        out = model.generate(input_ids, cache_implementation="dynamic", disable_compile=True, **kwargs)
    else:
        settings = settings or CompileSettings()
        _own_compiled_state(model)
        if settings.driver == "loop":
            decoder = _DECODERS.get(model)
            if decoder is None or decoder.settings != settings:
                decoder = _DECODERS[model] = StaticDecoder(model, settings)
            with _no_silent_fallback():
                return decoder.generate(input_ids, mask, max_new_tokens)
        with _no_silent_fallback():
            out = model.generate(input_ids, cache_implementation="static",
                                 compile_config=settings.compile_config(device), **kwargs)
        if getattr(model, "_compiled_call", None) is None:
            raise SieveError(f"generate did not compile {type(model).__name__}'s decode step on {device} "
                             "(transformers' _valid_auto_compile_criteria refused it)")
    new = out[:, input_ids.shape[1]:]
    if new.shape[1] != max_new_tokens:
        raise SieveError(f"generate returned {new.shape[1]} new tokens, not the {max_new_tokens} asked for")
    return new


def _median_seconds(run, device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _random_ids(model: torch.nn.Module, shape: tuple[int, int], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, int(model.config.vocab_size), shape, generator=generator).to(model_device(model))


def decode_tokens_per_second(model: torch.nn.Module, batch: int, prompt_len: int, new_tokens: int, compiled: bool,
                             warmup: int | None = None, *, repeats: int = REPEATS,
                             settings: CompileSettings | None = None, seed: int = 0) -> float:
    """Greedy decode throughput ``batch · new_tokens / t`` (``t``: median seconds of one whole
    generation from a random ``(batch, prompt_len)`` prompt, after ``warmup`` untimed runs; default
    ``WARMUP_COMPILED`` compiled, ``WARMUP_EAGER`` eager)."""
    runs = warmup if warmup is not None else (WARMUP_COMPILED if compiled else WARMUP_EAGER)
    if compiled and runs < 1:
        raise SieveError("a compiled decode timing needs at least one warm-up run (the one that compiles)")
    ids = _random_ids(model, (batch, prompt_len), seed)
    seconds = _median_seconds(lambda: greedy_generate(model, ids, new_tokens, compiled=compiled, settings=settings),
                              model_device(model), runs, repeats)
    return batch * new_tokens / seconds


def prefill_tokens_per_second(model: torch.nn.Module, batch: int, seq_len: int, *, warmup: int = 1,
                              repeats: int = REPEATS, seed: int = 0) -> float:
    """Prefill throughput ``batch · seq_len / t`` (``t``: median seconds of one eager forward of a
    random ``(batch, seq_len)`` batch, ``use_cache=False``, logits of the last position only when
    :func:`~sieve.models.forward.forward_features` finds ``logits_to_keep`` honoured)."""
    from sieve.models.forward import forward_features

    kwargs: dict[str, Any] = {"use_cache": False}
    if forward_features(model).logits_to_keep:
        kwargs["logits_to_keep"] = 1
    ids = _random_ids(model, (batch, seq_len), seed)

    def run() -> None:
        with torch.inference_mode(), evaluating(model):
            model(input_ids=ids, **kwargs)

    return batch * seq_len / _median_seconds(run, model_device(model), warmup, repeats)
