import json

from sieve.search.pareto import run_pareto
from sieve.search.rundir import RunDir


def test_bisection_frontier_and_resume(search_config, tmp_path):
    cfg = search_config(generations=1, tolerance=0.3, budget=None)
    result = run_pareto(cfg, RunDir(tmp_path / "pareto"), steps=2)
    frontier = result["frontier"]
    assert len(frontier) == 2
    first = 0.475  # midpoint of [0.05, 0.9]
    assert any(p["budget"] == first for p in frontier)
    for p in frontier:
        assert p["feasible"] == (p["drop"] <= 0.3)
        assert p["judged_on"] == "test" and p["drop"] == p["test_drop"]
        assert (tmp_path / "pareto" / f"budget-{p['budget']:.3f}" / "best_allocation.json").exists()
    second = [p for p in frontier if p["budget"] != first][0]["budget"]
    assert second == (round((first + 0.9) / 2, 3) if frontier[[p["budget"] for p in frontier].index(first)]["feasible"]
                      else round((0.05 + first) / 2, 3))
    feasible = [p["budget"] for p in frontier if p["feasible"]]
    assert result["largest_budget"] == (max(feasible) if feasible else None)
    saved = json.loads((tmp_path / "pareto" / "frontier.json").read_text())
    assert saved["frontier"] == result["frontier"]
    stored = sorted((tmp_path / "pareto").glob("budget-*/stats/*.safetensors"))  # one copy, linked by every probe
    assert len(stored) == 2 * len(frontier) and len({p.stat().st_ino for p in stored}) == 2
    again = run_pareto(cfg, RunDir(tmp_path / "pareto"), steps=2)  # finished probes resume, same answer
    assert again == result


def test_low_rank_pareto_factorises_and_warm_starts_on_removed_fractions(search_config, tmp_path):
    """A low-rank space needs ``XᵀX`` in the shared statistics (the probes reuse them), and the
    warm start carries each matrix's *removed* fraction (a factorised matrix has no zeros)."""
    cfg = search_config(generations=1, tolerance=0.99, budget=None, space="lowrank")
    result = run_pareto(cfg, RunDir(tmp_path / "pareto"), steps=2)
    assert [p["feasible"] for p in result["frontier"]] == [True, True]  # tolerance 0.99: every probe is feasible
    first = RunDir(tmp_path / "pareto").probe(0.475).best_allocation().allocation
    assert first.ranks and not any(first.sparsity.values())


def test_pareto_judges_on_held_out_documents_when_there_are_any(search_config, tmp_path):
    """With ``selection_examples`` a probe's feasibility is its accuracy drop on the held-out
    documents, not on the test split (which is still reported)."""
    cfg = search_config(generations=1, tolerance=0.3, budget=None, selection_examples=8)
    result = run_pareto(cfg, RunDir(tmp_path / "pareto"), steps=2)
    for p in result["frontier"]:
        assert p["judged_on"] == "selection"
        assert p["drop"] == p["dense_selection_acc"] - p["selection_acc"]
        assert p["test_drop"] == p["dense_acc"] - p["task_acc"]
        assert p["feasible"] == (p["drop"] <= 0.3)
        results = json.loads((tmp_path / "pareto" / f"budget-{p['budget']:.3f}" / "results.json").read_text())
        assert results["selection"]["chosen"]["selection_acc"] == p["selection_acc"]
