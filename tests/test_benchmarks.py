"""CPU smoke runs of the benchmark scripts, so the suite cannot rot (tiny random model, seconds)."""

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))


@pytest.mark.slow
def test_quality_smoke(tmp_path):
    import quality

    path = quality.main(["--smoke", "--seeds", "0", "--budgets", "0.5,2:4", "--out-dir", str(tmp_path),
                         "--runs", str(tmp_path / "runs"),
                         "--rows", "dense,uniform,owl,search-general,search-task,depth,search-depth"])
    body = json.loads(Path(path).read_text())
    methods = {(r["method"], r["budget"]) for r in body["rows"]}
    expected = {"dense", "uniform-magnitude", "uniform-wanda", "uniform-sparsegpt", "uniform-fused", "owl-wanda",
                "owl-fused", "search-general", "search-task", *quality.DEPTH_BASELINES, "search-depth"}
    assert {m for m, _ in methods} >= expected
    assert ("owl-wanda", "2:4") not in methods and ("uniform-wanda", "2:4") in methods
    for row in body["rows"]:
        assert set(row) >= {"method", "budget", "pattern", "seed", "task_acc", "task_nll", "wiki_ppl", "sparsity",
                            "seconds", "tokens"}
        if row["method"] in quality.DEPTH_BASELINES or row["method"] == "search-depth":  # one of two blocks, no zeros
            assert row["reduction"] == 0.5 and row["sparsity"] == 0.0 and len(row["removed_blocks"]) == 1
        elif row["method"].startswith("uniform") or row["method"].startswith("search"):
            assert row["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert body["device"] and body["commit"] and body["torch"] and body["transformers"]


@pytest.mark.slow
def test_throughput_smoke(tmp_path):
    import throughput

    path = throughput.main(["--smoke", "--out-dir", str(tmp_path), "--ray-actors", "1,2", "--search-loop",
                            "--batch-candidates", "1,2", "--packed-rows", "on,off", "--whole-search"])
    body = json.loads(Path(path).read_text())
    assert [(r["model"], r["mode"]) for r in body["rows"]] == [("llama-tiny", "in_place"), ("llama-tiny", "on_the_fly")]
    for row in body["rows"]:
        assert row["candidate_s"] > 0
        assert row["candidate_s"] == pytest.approx(row["apply_s"] + row["forward_s"] + row["overhead_s"], abs=3e-4)
    assert [(loop["mode"], loop["batch_candidates"], loop["packed_rows"]) for loop in body["search_loop"]] == [
        ("in_place", 1, True), ("in_place", 1, False), ("in_place", 2, True), ("in_place", 2, False),
        ("on_the_fly", 1, True), ("on_the_fly", 1, False)]
    assert body["search_loop"][2]["candidates_per_forward"] == [2, 2]
    assert all(loop["first_stage_forwards"] and loop["final_stage_forwards"] for loop in body["search_loop"])
    for loop in body["search_loop"]:
        assert loop["final_stage_examples"] == 12 and loop["final_stage_tokens_per_s"] > 0 and loop["dense_tokens_per_s"] > 0
        assert loop["cuda_graphs"] is False and loop["final_stage_graphed"] == 0  # CPU: no graphs
    assert [r["actors"] for r in body["ray"]] == [1, 2] and body["ray"][0]["speedup"] == 1.0
    assert [w["pruner_mode"] for w in body["whole_search"]] == ["in_place", "on_the_fly"]
    whole = body["whole_search"][0]
    assert whole["generations"] == 2 and whole["tokens"] > 0 and 0 < whole["loop_tokens_per_s"]
    assert body["whole_search"][1]["best_fitness"] == whole["best_fitness"]  # the same search, pruned on the fly


def test_report_merges_parts(tmp_path):
    import report  # noqa: F401  (module imports cleanly)

    part = {"date": "2026-01-01", "device": "X", "commit": "abc", "search": {"generations": 3}, "rows": [
        {"method": "search-task", "budget": "0.5", "pattern": "unstructured", "seed": s, "task_acc": a, "task_nll": 0.5,
         "wiki_ppl": 40.0, "sparsity": 0.5, "seconds": 1.0, "tokens": 10} for s, a in ((0, 0.7), (1, 0.8))]}
    text = report.quality_markdown([part])
    assert "| search-task (3 gen) | 0,1 | 0.750 ± 0.071 |" in text


@pytest.mark.slow
def test_lowrank_payoff_smoke(search_config, run_search, tmp_path):
    import lowrank_payoff

    run = tmp_path / "run"
    run_search(search_config(space="lowrank", budget=0.3, generations=1), run, report=False)
    path = lowrank_payoff.main(["--smoke", "--allocation", str(run), "--out-dir", str(tmp_path), "--rank-multiple", "4"])
    rows = {(r["model"].split(" ")[0], r["variant"]): r for r in json.loads(Path(path).read_text())["rows"]}
    assert len(rows) == 5
    aligned = rows[("llama-tiny", "lowrank-x4")]
    assert aligned["parameters"] <= rows[("llama-tiny", "lowrank")]["parameters"]  # ranks rounded down
    for model in {m for m, _ in rows}:
        dense, small = rows[(model, "dense")], rows[(model, "lowrank")]
        assert small["parameters"] < dense["parameters"] and small["tensor_bytes"] < dense["tensor_bytes"]
        assert small["prefill_tokens_per_s"] > 0 and small["decode_b2_tokens_per_s"] > 0
    allocation_rows = [r for (m, _), r in rows.items() if not m.startswith("llama")]
    assert all(r["checkpoint_bytes"] > 0 for r in allocation_rows)


@pytest.mark.slow
def test_dtype_agreement_smoke(tmp_path):
    import dtype_agreement

    path = dtype_agreement.main(["--smoke", "--candidates", "6", "--out-dir", str(tmp_path)])
    body = json.loads(Path(path).read_text())
    full, half = body["fitness_float32"], body["fitness_bfloat16"]
    assert body["candidates"] == len(full) == len(half) == 6
    assert -1.0 <= body["spearman"] <= 1.0 and -1.0 <= body["kendall"] <= 1.0
    assert body["max_abs_diff"] == pytest.approx(max(abs(a - b) for a, b in zip(full, half)))
    assert full != half  # bf16 really ran: rounding moves every fitness a little


def test_threshold_kernel_smoke(tmp_path):
    """The kernel benchmark's plumbing on tiny shapes, through Triton's CPU interpreter."""
    import threshold_kernel

    body = json.loads(Path(threshold_kernel.main(["--smoke", "--out-dir", str(tmp_path)])).read_text())
    assert [r["layout"] for r in body["rows"]] == ["tiny-stack", "tiny-slots"]
    assert all(r["bit_identical"] and r["call_ms"] > 0 for r in body["rows"])


@pytest.mark.slow
def test_offload_smoke(tmp_path):
    import offload

    path = offload.main(["--smoke", "--candidates", "2", "--out-dir", str(tmp_path)])
    body = json.loads(Path(path).read_text())
    assert body["same_fitness"] and body["same_weights"]
    assert body["uncapped"]["seconds_per_candidate"] > 0 and body["capped"]["seconds_per_candidate"] > 0


@pytest.mark.slow
def test_large_model_smoke(tmp_path):
    """The end-to-end CLI arms on a tiny saved model: both arms run, and with no cap they agree exactly."""
    import large_model

    path = large_model.main(["--smoke", "--out-dir", str(tmp_path)])
    body = json.loads(Path(path).read_text())
    assert [a["arm"] for a in body["arms"]] == ["capped", "uncapped"]
    assert all(a["candidates"] > 0 and a["per_candidate_s"] > 0 and len(a["history"]) == 3 for a in body["arms"])
    assert body["identical"] == {"history": True, "best_genome": True, "best_fitness": True}


@pytest.mark.slow
def test_deploy_smoke(tmp_path):
    """Dense, depth and low-rank folders measured eager and compiled; ratios are figure / dense figure."""
    import deploy
    from transformers import LlamaConfig, LlamaForCausalLM

    args = ["--smoke", "--compiled-drivers", "loop,generate", "--out-dir", str(tmp_path)]
    body = json.loads(Path(deploy.main(args)).read_text())
    rows = {r["variant"]: r for r in body["rows"]}
    assert list(rows) == ["dense", "depth", "lowrank"]
    block = sum(p.numel() for p in LlamaForCausalLM(LlamaConfig(**deploy.SMOKE_LLAMA)).model.layers[0].parameters())
    dense, depth = rows["dense"], rows["depth"]
    assert block > 0 and depth["parameters"] == dense["parameters"] - block
    assert depth["checkpoint_bytes"] < dense["checkpoint_bytes"] and rows["lowrank"]["parameters"] < dense["parameters"]
    figures = [f"decode_b{b}_{mode}_tokens_per_s" for b in (1, 2) for mode in ("eager", "compiled", "compiled_generate")]
    for row in rows.values():
        assert row["prefill_peak_gib"] is None  # CPU: no peak-memory figure
        assert all(row[k] > 0 for k in ["prefill_tokens_per_s", *figures])
        for key, ratio in row["vs_dense"].items():
            if dense[key] is None:
                assert ratio is None
            else:
                assert ratio == pytest.approx(row[key] / dense[key], rel=1e-3)
    assert dense["vs_dense"]["parameters"] == 1.0
    assert body["settings"]["compile"]["backend"] == "aot_eager" and body["settings"]["decode_batches"] == [1, 2]
    assert body["command"].endswith(" ".join(args)) and body["settings"]["compiled_drivers"] == ["loop", "generate"]
    assert body["device"] and body["commit"] and body["date"]


def test_gemm_shapes_smoke(tmp_path):
    """Every rank is timed beside its rounded-up multiple of 64, and an aligned rank is its own reference."""
    import gemm_shapes

    body = json.loads(Path(gemm_shapes.main(["--smoke", "--out-dir", str(tmp_path)])).read_text())
    rows = body["rows"]
    assert {(r["rows"], r["cols"], r["tokens"]) for r in rows} == {(64, 128, 1), (64, 128, 16)}
    assert sorted({r["rank"] for r in rows}) == gemm_shapes.ranks_for(128) == [32, 56, 63, 64, 65, 72]
    assert all(r["seconds"] > 0 and r["vs_dense"] > 0 for r in rows)
    assert all(r["slowdown_vs_aligned_up"] == 1.0 for r in rows if r["rank"] % 64 == 0)
    assert all(r["slowdown_vs_aligned_up"] is None for r in rows if r["rank"] > 64)
    assert body["command"].startswith("benchmarks/gemm_shapes.py --smoke") and body["commit"]


@pytest.mark.slow
def test_generations_smoke(tmp_path):
    import generations

    path = generations.main(["--smoke", "--generations", "3", "--checkpoints", "1,3", "--out-dir", str(tmp_path),
                             "--runs", str(tmp_path / "runs"), "--selection-examples", "6", "--patience", "3"])
    body = json.loads(Path(path).read_text())
    (run,) = body["runs"]
    assert [r["generation"] for r in run["curve"]] == list(range(4))  # the initial population and 3 generations
    assert run["early_stopping"]["patience"] == 3 and not run["early_stopping"]["stopped"]  # the limit came first
    assert run["generations_done"] == 3
    assert [s["generations"] for s in run["summary"]] == [1, 3]
    final = next(r for r in run["table"] if r["method"] == "sieve-search")
    chosen = run["selection"]["chosen_generation"]
    assert run["selected"]["chosen_test_acc"] == final["task_acc"] == run["curve"][chosen]["test_acc"]
    assert run["selected"]["last_test_acc"] == run["summary"][-1]["test_acc"] == run["curve"][-1]["test_acc"]
    assert body["command"].startswith("benchmarks/generations.py --smoke") and body["commit"] and body["date"]


@pytest.mark.slow
def test_tune_smoke(tmp_path):
    """The tuning benchmark runs the user's commands: a pruned base, tuned plainly and with
    distillation at a mix; the structure is the base's before and after."""
    import tune

    path = tune.main(["--smoke", "--bases", "zeros", "--mixes", "0.5", "--out-dir", str(tmp_path),
                      "--work", str(tmp_path / "work")])
    body = json.loads(Path(path).read_text())
    assert [(r["base"], r["variant"]) for r in body["rows"]] == [("zeros", "ce"), ("zeros", "distill-mix0.5")]
    assert body["rows"][1]["settings"]["distill"]["general_mix"] == 0.5 and body["rows"][0]["settings"]["distill"] is None
    for row in body["rows"]:
        before, after = row["test"]["before"], row["test"]["after"]
        assert before["sparsity"] == after["sparsity"] == pytest.approx(0.6, abs=0.01)
        assert before["parameters"] == after["parameters"]
        assert row["tune_command"].startswith(f"sieve tune {tmp_path / 'work' / 'zeros-0.6'} --out")
    assert body["bases"]["zeros"]["command"].startswith("sieve prune") and body["commit"] and body["date"]
