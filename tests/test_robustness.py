"""Input that never produces a traceback: every file sieve reads is validated at the boundary.

A fuzz-style test feeds each file type random structural mutations (wrong top-level type, a missing
required key, an unknown key, a value of the wrong type) and asserts one ``error:`` line, exit code
2 and an untouched run directory; the cases a probe found on f9ac8ff are listed one by one below.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from sieve.cli import app


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _one_line_error(result, needle: str = "") -> None:
    text = result.output.strip()
    assert result.exit_code == 2, text
    assert "Traceback" not in text and text.startswith("error: ") and len(text.splitlines()) <= 2, text
    assert needle in " ".join(text.split()), text


def _snapshot(run: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}


def _wrong(value):
    """A value of another JSON type than ``value`` (never null, which optional fields accept)."""
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return "not-a-number"
    if isinstance(value, str):
        return 123
    if isinstance(value, dict):
        return "not-a-mapping"
    return [1] if value is None else {"not": "a list"}


def mutations(body: dict, required: list[str], nested: list[str], rng: random.Random, n: int) -> list[tuple[str, object]]:
    """``n`` structural mutations of ``body`` (a parsed YAML/JSON mapping), each ``(label, mutated)``."""
    out = [("top-level list", [body]), ("top-level string", "text")]
    for key in required:
        changed = copy.deepcopy(body)
        del changed[key]
        out.append((f"missing {key}", changed))
    for where in [None, *nested]:
        changed = copy.deepcopy(body)
        (changed if where is None else changed[where])["unexpected_key"] = 1
        out.append((f"extra key in {where or 'top level'}", changed))
    for key in body:
        changed = copy.deepcopy(body)
        changed[key] = _wrong(body[key])
        out.append((f"wrong type of {key}", changed))
    for where in nested:
        for key in body[where]:
            changed = copy.deepcopy(body)
            changed[where][key] = _wrong(body[where][key])
            out.append((f"wrong type of {where}.{key}", changed))
    rng.shuffle(out)
    return out[:n]


N = 10  # mutations per file type and test run (a fixed seed: the same ones every run)


def test_fuzzed_config_and_checkpoint(copy_run):
    rng = random.Random(0)
    run = copy_run()
    for name, required, nested in (("config.yaml", [], ["calibration", "evaluation", "space"]),
                                   ("checkpoint/state.json", ["generation", "pop_x", "pop_f", "rng_state", "format"], [])):
        path = run / name
        original = path.read_text()
        body = yaml.safe_load(original) if name.endswith(".yaml") else json.loads(original)
        for label, mutated in mutations(body, required, nested, rng, N):
            path.write_text(yaml.safe_dump(mutated) if name.endswith(".yaml") else json.dumps(mutated))
            snapshot = _snapshot(run)
            result = _invoke("search", "--resume", run, "--generations", 3)
            assert result.exit_code == 2, f"{name}, {label}: {result.output}"
            _one_line_error(result)
            assert _snapshot(run) == snapshot, f"{name}, {label}: the run directory changed"
        path.write_text(original)


def test_fuzzed_allocation_file(finished_run, tmp_path):
    rng = random.Random(1)
    body = json.loads((finished_run / "best_allocation.json").read_text())
    path = tmp_path / "alloc.json"
    for label, mutated in mutations(body, ["format", "modules"], ["calibration", "method", "split"], rng, N):
        path.write_text(json.dumps(mutated))
        result = _invoke("export", path, "--to", "csv", "--out", tmp_path / "t.csv", "--device", "cpu")
        assert result.exit_code == 2, f"{label}: {result.output}"
        _one_line_error(result)
        assert not (tmp_path / "t.csv").exists()


def test_fuzzed_search_space(tmp_path, tiny_model_dir, tiny_task, tiny_corpus):
    rng = random.Random(2)
    body = {"description": "d", "modules": ["*"], "genes": "matrix", "levels": {"min": 0.0, "max": 0.9, "per_smallest_gene": 20},
            "primitive": {"name": "mask", "pattern": "unstructured"}, "method": {"name": "fused", "tau": 2.0}}
    space = tmp_path / "space.yaml"
    for label, mutated in mutations(body, [], ["levels", "primitive", "method"], rng, N):
        space.write_text(yaml.safe_dump(mutated))
        result = _invoke("search", "--budget", "0.5", "--space", space, "--model", tiny_model_dir, "--task", tiny_task,
                         "--general", tiny_corpus, "--device", "cpu", "--run-dir", tmp_path / "run")
        assert result.exit_code == 2, f"{label}: {result.output}"
        _one_line_error(result)
        assert not (tmp_path / "run").exists(), "a refused search left a run directory behind"


def _rewrite_safetensors(path: Path, out: Path, change) -> None:
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    tensors, meta = change(tensors, meta)
    save_file(tensors, str(out), metadata=meta)


def test_damaged_masks_and_statistics(finished_run, copy_run, tmp_path, tiny_model_dir):
    masks = tmp_path / "masks.safetensors"
    assert _invoke("export", finished_run, "--to", "masks", "--out", masks, "--device", "cpu").exit_code == 0
    name = next(iter(json.loads(safe_open(str(masks), framework="pt").metadata()["shapes"])))
    for label, change in (
        ("shapes not JSON", lambda t, m: (t, {**m, "shapes": "{"})),
        ("shapes a list", lambda t, m: (t, {**m, "shapes": "[1, 2]"})),
        ("shape of strings", lambda t, m: (t, {**m, "shapes": json.dumps({name: ["a"]})})),
        ("tensor missing", lambda t, m: ({k: v for k, v in t.items() if k != name}, m)),
        ("format missing", lambda t, m: (t, {k: v for k, v in m.items() if k != "format"})),
    ):
        bad = tmp_path / "bad-masks.safetensors"
        _rewrite_safetensors(masks, bad, change)
        result = _invoke("prune", "--masks", bad, "--model", tiny_model_dir, "--out", tmp_path / "o", "--device", "cpu")
        _one_line_error(result)
        assert not (tmp_path / "o").exists(), label

    run = copy_run()
    stats = next((run / "stats").glob("*.safetensors"))
    for label, change in (
        ("n_tokens not JSON", lambda t, m: (t, {**m, "n_tokens": "{"})),
        ("n_tokens a list", lambda t, m: (t, {**m, "n_tokens": "[]"})),
        ("source unknown", lambda t, m: (t, {**m, "source": "web"})),
        ("a tensor missing", lambda t, m: (dict(list(t.items())[1:]), m)),
    ):
        original = stats.read_bytes()
        _rewrite_safetensors(stats, stats, change)
        snapshot = _snapshot(run)
        result = _invoke("export", run, "--to", "masks", "--out", tmp_path / "m.safetensors", "--device", "cpu")
        _one_line_error(result, "is damaged")
        assert _snapshot(run) == snapshot, label
        stats.write_bytes(original)


# ------------------------------------------------------------------ the probe's cases, one by one


@pytest.mark.parametrize("modules, needle", [
    ({"model.layers.0.mlp.up_proj": "half"}, "modules.model.layers.0.mlp.up_proj: Input should be a valid number"),
    ({"model.layers.0.mlp.up_proj": None}, "modules.model.layers.0.mlp.up_proj: Input should be a valid number"),
    ({"model.layers.0.mlp.up_proj": {"s": 0.5}}, "modules.model.layers.0.mlp.up_proj: Input should be a valid number"),
    (["model.layers.0.mlp.up_proj"], "modules: Input should be a valid dictionary"),
])
def test_bad_allocation_values(finished_run, tmp_path, modules, needle):
    body = json.loads((finished_run / "best_allocation.json").read_text())
    path = tmp_path / "a.json"
    path.write_text(json.dumps({**body, "modules": modules}))
    _one_line_error(_invoke("export", path, "--to", "csv", "--out", tmp_path / "t.csv"), needle)


@pytest.mark.parametrize("text, needle", [
    ("[1, 2]", "must hold a JSON object, got list"),
    ('"just a string"', "must hold a JSON object, got str"),
    ("{not json", "is not valid JSON"),
    ('{"format": "sieve.allocation/v1"}', "modules: Field required"),
    ('{"format": "sieve.allocation/v1", "modules": {}, "method": {"name": "fused", "tau": "big"}}',
     "method: fused.tau: Input should be a valid number"),
])
def test_bad_allocation_files(tmp_path, text, needle):
    path = tmp_path / "a.json"
    path.write_text(text)
    _one_line_error(_invoke("export", path, "--to", "csv", "--out", tmp_path / "t.csv"), needle)


def test_bad_config_values_and_flags(tmp_path, tiny_model_dir, tiny_task, tiny_corpus):
    common = ["--model", tiny_model_dir, "--task", tiny_task, "--general", tiny_corpus, "--run-dir", tmp_path / "r"]
    for text, needle in (("budget: half\n", "budget: Input should be a valid number"),
                         ("space: {name: s, levels: {min: zero}}\n", "space.levels.min: Input should be a valid number"),
                         ("calibration: {batch_size: 0}\n", "calibration.batch_size: Input should be greater than 0"),
                         ("- a list\n", "must hold a mapping at the top level")):
        (tmp_path / "c.yaml").write_text(text)
        _one_line_error(_invoke("search", "--config", tmp_path / "c.yaml", *common), needle)
    _one_line_error(_invoke("search", "--budget", "0.5", "--device", "tpu", *common), "--device: must be auto, cpu, cuda or cuda:N")
    _one_line_error(_invoke("search", "--budget", "0.5", "--device", "cuda:7", *common), "device cuda:7 is not available")
    _one_line_error(_invoke("search", "--budget", "0.5", "--fitness", "accuracy", *common), "unknown fitness 'accuracy'")
    _one_line_error(_invoke("search", "--budget", "0.5", "--ray-address", "nowhere", *common), "--ray-address: must be 'auto'")
    _one_line_error(_invoke("search", "--budget", "0.5", "--ray-address", "127.0.0.1:1", *common),
                    "cannot reach the Ray cluster at 127.0.0.1:1")
    assert not (tmp_path / "r").exists()  # every refusal above came before a run directory was made
    _one_line_error(_invoke("prune", "--method", "fused", "--calibration", "task", "--out", tmp_path / "o"),
                    "--method: fused.source: unknown key")


def test_garbage_model_weights_are_one_line(tiny_model_dir, tmp_path):
    import shutil

    for label, damage in (("truncated", lambda b: b[: len(b) // 3]), ("garbage", lambda b: b"\x00garbage" * 10)):
        model = Path(shutil.copytree(tiny_model_dir, tmp_path / label))
        weights = model / "model.safetensors"
        weights.write_bytes(damage(weights.read_bytes()))
        _one_line_error(_invoke("prune", "--model", model, "--method", "magnitude", "--out", tmp_path / "o"),
                        "cannot load model")


def test_export_never_overwrites_without_force_nor_the_run(finished_run, tmp_path):
    out = tmp_path / "t.csv"
    out.write_text("mine\n")
    _one_line_error(_invoke("export", finished_run, "--to", "csv", "--out", out), f"--out {out} exists; pass --force")
    assert out.read_text() == "mine\n"
    assert _invoke("export", finished_run, "--to", "csv", "--out", out, "--force").exit_code == 0
    assert out.read_text().startswith("module,")
    own = finished_run / "best_allocation.json"
    before = own.read_bytes()
    _one_line_error(_invoke("export", finished_run, "--to", "csv", "--out", own, "--force"), "lies inside the run")
    assert own.read_bytes() == before
    _one_line_error(_invoke("export", finished_run, "--to", "csv", "--out", tmp_path), "is a folder; this command writes a file there")
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "keep.txt").write_text("x")
    _one_line_error(_invoke("export", finished_run, "--to", "hf", "--out", folder), "exists; pass --force")
    assert (folder / "keep.txt").exists()
    assert not list(tmp_path.glob(".*partial*"))


def test_prune_allocation_uses_the_recorded_method(finished_run, tmp_path):
    from transformers import AutoModelForCausalLM

    assert _invoke("prune", "--allocation", finished_run, "--out", tmp_path / "p", "--device", "cpu").exit_code == 0
    assert _invoke("export", finished_run, "--to", "hf", "--out", tmp_path / "e", "--device", "cpu").exit_code == 0
    pruned, exported = (AutoModelForCausalLM.from_pretrained(tmp_path / n) for n in ("p", "e"))
    for name, p in pruned.named_parameters():
        assert (p == exported.get_parameter(name)).all(), name
    written = json.loads((tmp_path / "p" / "allocation.json").read_text())
    recorded = json.loads((finished_run / "best_allocation.json").read_text())
    assert written["method"] == recorded["method"] == {"name": "fused", "tau": 2.0, "alpha": 0.5, "beta": 2.0}


def test_allocation_without_weights_hash_is_refused(finished_run, tmp_path):
    body = json.loads((finished_run / "best_allocation.json").read_text())
    del body["weights_hash"]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(body))
    _one_line_error(_invoke("export", path, "--to", "csv", "--out", tmp_path / "t.csv"), "records no weights_hash")


def test_gguf_conversion_is_cached_by_content(tmp_path, monkeypatch):
    from sieve.io import file_digest
    from sieve.models import loading

    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF fake")
    monkeypatch.setenv("SIEVE_CACHE", str(tmp_path / "cache"))
    calls = []

    def convert(src, out, provenance):
        calls.append(src)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")
        return out

    monkeypatch.setattr(loading, "_convert_gguf", convert)
    first, _ = loading.resolve_model_path(str(gguf))
    second, _ = loading.resolve_model_path(str(gguf))
    assert first == second and len(calls) == 1
    assert Path(first).name.startswith(f"m-{file_digest(gguf)}-")
    gguf.write_bytes(b"GGUF other")
    third, _ = loading.resolve_model_path(str(gguf))
    assert third != first and len(calls) == 2
