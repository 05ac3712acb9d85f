"""Task loading: built-in rotten tomatoes, local lm-eval YAMLs, carving, errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from sieve.config import validate
from sieve.data.rotten_tomatoes import materialize_rotten_tomatoes, split_rotten_tomatoes
from sieve.data.splits import SplitSpec, TaskExample, TaskSplits, cap_indices, carve, load_task
from sieve.errors import SieveError


def review_text(example: TaskExample) -> str:
    """The reviewed text of a rotten-tomatoes example (its last ``Review:`` block)."""
    return example.context.rsplit("Review: ", 1)[1].removesuffix("\nSentiment:")


def question(example: TaskExample) -> str:
    return example.context.rsplit("Q: ", 1)[1].removesuffix("\nA:")


@pytest.fixture(scope="session")
def builtin(sieve_cache: Path) -> TaskSplits:
    return load_task("rotten_tomatoes")


# ---------------------------------------------------------------- built-in rotten tomatoes


def test_builtin_loads_with_expected_prompt(builtin: TaskSplits) -> None:
    assert builtin.output_type == "multiple_choice"
    assert builtin.sizes["calibration"] == len(builtin.calibration) == 128
    assert builtin.sizes["validation"] == len(builtin.validation) == 256
    assert builtin.sizes["test"] == len(builtin.test) == 500
    assert builtin.sizes["test_pool"] == 2000 and builtin.sizes["validation_pool"] == 1000
    assert builtin.carved == ()
    for ex in builtin.validation[:20]:
        assert ex.continuations == (" negative", " positive")  # one space, not two
        assert ex.gold in (0, 1)
        assert ex.context.startswith("Review: ")
        assert ex.context.endswith("\nSentiment:")
        assert ex.context.count("Review: ") == 5  # four shots + the document
    shots = builtin.test[0].context.split("\n\n")[:4]
    assert [s.rsplit("Sentiment: ", 1)[1] for s in shots] == [
        "negative", "positive", "negative", "positive"]
    # first_n: every prompt carries the same four examples.
    assert builtin.test[0].context.split("\n\n")[:4] == builtin.validation[7].context.split(
        "\n\n")[:4]
    labels = [ex.gold for ex in builtin.test]
    assert 0.3 < np.mean(labels) < 0.8  # both labels present, fresh somewhat more common


def test_builtin_splits_are_disjoint(builtin: TaskSplits, sieve_cache: Path) -> None:
    texts = {role: {review_text(ex) for ex in getattr(builtin, role)}
             for role in ("calibration", "validation", "test")}
    assert len(texts["test"]) == 500 and len(texts["validation"]) == 256
    assert not texts["test"] & texts["validation"]
    assert not texts["test"] & texts["calibration"]
    assert not texts["validation"] & texts["calibration"]
    shots = {s.split("\n")[0].removeprefix("Review: ")
             for s in builtin.test[0].context.split("\n\n")[:4]}
    assert len(shots) == 4 and not shots & texts["calibration"]
    # ... and each split comes from its own JSONL file.
    data = sieve_cache / "tasks" / "rotten_tomatoes"
    on_disk = {s: {json.loads(line)["text"] for line in (data / f"{s}.jsonl").open()}
               for s in ("train", "validation", "test")}
    assert texts["test"] <= on_disk["test"]
    assert texts["validation"] <= on_disk["validation"]
    assert texts["calibration"] <= on_disk["train"]


def test_builtin_materialisation(builtin: TaskSplits, sieve_cache: Path) -> None:
    data = sieve_cache / "tasks" / "rotten_tomatoes"
    rows = {s: [json.loads(line) for line in (data / f"{s}.jsonl").open()]
            for s in ("train", "validation", "test")}
    assert len(rows["test"]) == 2000 and len(rows["validation"]) == 1000
    assert 9000 < len(rows["train"]) < 10500
    assert [r["label"] for r in rows["train"][:4]] == [0, 1, 0, 1]
    assert all(len(r["text"]) < 60 for r in rows["train"][:4])  # short few-shot examples
    all_texts = [r["text"] for s in rows.values() for r in s]
    assert len(all_texts) == len(set(all_texts))  # deduplicated, disjoint
    assert {r["label"] for s in rows.values() for r in s} == {0, 1}
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["sizes"] == {s: len(v) for s, v in rows.items()}
    # Generated YAML points at the real files and is reused, not rewritten.
    yaml_path = data / "rotten_tomatoes.yaml"
    cfg = yaml.safe_load(yaml_path.read_text())
    assert cfg["dataset_kwargs"]["data_files"]["test"] == str((data / "test.jsonl").resolve())
    stamps = {p.name: p.stat().st_mtime_ns for p in data.iterdir()}
    assert materialize_rotten_tomatoes() == yaml_path
    assert {p.name: p.stat().st_mtime_ns for p in data.iterdir()} == stamps


def test_builtin_is_deterministic_and_seeded(builtin: TaskSplits) -> None:
    again = load_task("rotten_tomatoes")
    assert again == builtin
    other = load_task("rotten_tomatoes", SplitSpec(seed=1))
    assert other.sizes == builtin.sizes
    assert other.test == builtin.test  # the test subset is the same for every seed
    assert other.validation != builtin.validation  # the validation cap takes another seeded subset
    small = load_task("rotten_tomatoes", SplitSpec(max_calibration=8, max_validation=None, max_test=16))
    assert (len(small.calibration), len(small.validation), len(small.test)) == (8, 1000, 16)


def test_calibration_texts_are_context_plus_gold(builtin: TaskSplits) -> None:
    texts = builtin.calibration_texts()
    assert len(texts) == 128
    ex = builtin.calibration[0]
    assert texts[0] == ex.context + (" negative", " positive")[ex.gold]


def test_split_rotten_tomatoes_dedupes_and_alternates() -> None:
    rows = [("fresh", f"good film {i}") for i in range(20)]
    rows += [("rotten", f"bad  film\n{i}") for i in range(20)]
    rows += [("fresh", "good film 3"), ("plot", "a plot summary"),
             ("fresh", "mixed one"), ("rotten", "mixed one"), ("rotten", "   ")]
    parts = split_rotten_tomatoes(rows, test_size=10, validation_size=5)
    texts = [d["text"] for p in parts.values() for d in p]
    assert len(texts) == len(set(texts)) == 40  # duplicate merged, conflict and plot dropped
    assert "mixed one" not in texts and "a plot summary" not in texts
    assert "bad film 7" in texts  # whitespace normalised
    assert (len(parts["test"]), len(parts["validation"]), len(parts["train"])) == (10, 5, 25)
    train = parts["train"]
    assert [d["label"] for d in train[:4]] == [0, 1, 0, 1]
    for shot, label in ((train[0], 0), (train[1], 1)):  # the shortest of their label
        assert len(shot["text"]) == min(len(d["text"]) for d in train if d["label"] == label)
    assert split_rotten_tomatoes(list(reversed(rows)), test_size=10, validation_size=5) == parts
    with pytest.raises(SieveError, match="two train reviews of each label"):
        split_rotten_tomatoes(rows[:20], test_size=10, validation_size=5)


# ---------------------------------------------------------------- local YAML tasks


def lm_eval_requests(yaml_path: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    """What lm-eval's own ``build_all_requests`` makes of the task, keyed by question."""
    from lm_eval.tasks import TaskManager

    task = next(iter(TaskManager(include_defaults=False).load(str(yaml_path))["tasks"].values()))
    task.set_fewshot_seed(seed=1234)  # what lm_eval.simple_evaluate does by default
    task.build_all_requests()
    by_doc: dict[int, list] = {}
    for inst in task.instances:
        by_doc.setdefault(inst.doc_id, []).append(inst)
    out = {}
    for insts in by_doc.values():
        insts.sort(key=lambda i: i.idx)
        ctx = insts[0].args[0]
        out[ctx.rsplit("Q: ", 1)[1].removesuffix("\nA:")] = (
            ctx, tuple(i.args[1] for i in insts))
    return out


def test_local_yaml_matches_lm_eval_requests(make_task: Callable[..., Path]) -> None:
    path = make_task({"train": 30, "validation": 12, "test": 20})  # random few-shot sampler
    splits = load_task(str(path), SplitSpec(max_test=None, max_validation=None, max_calibration=None))
    assert splits.name == "local_mc" and splits.carved == ()
    assert (len(splits.validation), len(splits.test)) == (12, 20)
    reference = lm_eval_requests(path)
    assert len(reference) == 20
    for ex in splits.test:
        ctx, conts = reference[question(ex)]
        assert ex.context == ctx
        assert ex.continuations == conts
        assert len(ex.continuations) == 3 and all(c.startswith(" ") for c in conts)
        assert ex.context.count("Q: ") == 3  # two shots
    # gold = the doc's answer index (answers rotate 0, 1, 2 with the item number)
    for ex in splits.test + splits.validation:
        item = int(question(ex).split(":")[0].removeprefix("Item "))
        assert ex.gold == item % 3
    # A capped test split keeps lm-eval's contexts (the sampler stream follows the full split).
    capped = load_task(str(path), SplitSpec(max_test=5))
    assert len(capped.test) == 5
    for ex in capped.test:
        assert (ex.context, ex.continuations) == reference[question(ex)]
    # Calibration excludes every document shown as a few-shot example in val/test prompts.
    shown = {block.split("\n")[0].removeprefix("Q: ")
             for ex in splits.test + splits.validation for block in ex.context.split("\n\n")[:-1]}
    calib = {question(ex) for ex in splits.calibration}
    assert calib and not calib & shown
    assert splits.sizes["calibration"] == len(calib) == 30 - len(shown)


def test_missing_validation_is_carved_from_train_by_seed(make_task: Callable[..., Path]) -> None:
    path = make_task({"train": 40, "test": 10}, fewshot_config={"sampler": "first_n"})
    a = load_task(str(path), SplitSpec(seed=0, max_validation=8))
    b = load_task(str(path), SplitSpec(seed=0, max_validation=8))
    c = load_task(str(path), SplitSpec(seed=1, max_validation=8))
    assert a == b
    assert a.carved == ("validation",)
    assert len(a.validation) == 8
    assert {question(e) for e in a.validation} != {question(e) for e in c.validation}
    for s in (a, c):
        q = {r: {question(e) for e in getattr(s, r)} for r in ("calibration", "validation", "test")}
        assert not q["validation"] & q["calibration"] and not q["test"] & q["validation"]
        # the two first_n few-shot documents (Item 0, Item 1) are in no split
        shots = {block.split("\n")[0].removeprefix("Q: ")
                 for block in s.test[0].context.split("\n\n")[:-1]}
        assert shots == {"Item 0: which colour words fit?", "Item 1: which colour words fit?"}
        assert not shots & (q["validation"] | q["calibration"] | q["test"])
        assert len(q["calibration"]) + len(q["validation"]) == 38
    assert a.sizes["validation"] == 8 and a.sizes["calibration"] == 30


def test_single_split_task_is_carved_three_ways(make_task: Callable[..., Path]) -> None:
    path = make_task({"test": 30}, num_fewshot=0)
    s = load_task(str(path), SplitSpec(max_calibration=4, max_validation=None))
    assert s.carved == ("validation", "calibration")
    # each carved role takes min(cap, 30 // 3); the owner (test) keeps the rest
    assert (len(s.validation), len(s.calibration), len(s.test)) == (10, 4, 16)
    assert s.sizes["calibration_pool"] == 4
    q = [{question(e) for e in getattr(s, r)} for r in ("calibration", "validation", "test")]
    assert not (q[0] & q[1] or q[0] & q[2] or q[1] & q[2])
    assert all(ex.context.count("Q: ") == 1 for ex in s.test)


def test_loglikelihood_output_type(make_task: Callable[..., Path]) -> None:
    path = make_task({"train": 6, "test": 6}, output_type="loglikelihood",
                     doc_to_target=" {{choices[answer]}}", doc_to_choice=None, num_fewshot=0)
    s = load_task(str(path))
    ex = s.test[0]
    assert len(ex.continuations) == 1 and ex.gold == 0
    assert ex.context.endswith("\nA:") and ex.continuations[0].startswith(" ")


def test_carve_and_cap_helpers() -> None:
    parts = carve(list(range(10)), ["validation", "calibration"], {"validation": 3}, seed=0)
    assert len(parts["validation"]) == 3 and len(parts["calibration"]) == 7
    assert sorted(parts["validation"] + parts["calibration"]) == list(range(10))
    assert parts["validation"] == sorted(parts["validation"])  # original order kept
    parts = carve(list(range(10)), ["validation", "calibration"], {"validation": None}, seed=0)
    assert len(parts["validation"]) == 5
    rng = np.random.default_rng(0)
    kept = cap_indices(100, 7, rng)
    assert len(kept) == 7 and kept == sorted(kept)
    assert cap_indices(5, 7, rng) == list(range(5)) and cap_indices(5, None, rng) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- bad input


def test_bad_inputs_raise_sieve_error(tmp_path: Path, make_task: Callable[..., Path]) -> None:
    with pytest.raises(SieveError, match="task YAML not found"):
        load_task(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: x\n  output_type: [unclosed\n")
    with pytest.raises(SieveError, match="does not parse"):
        load_task(str(bad))
    not_task = tmp_path / "not_task.yaml"
    not_task.write_text("just: a mapping\n")
    with pytest.raises(SieveError, match="not an lm-eval task YAML"):
        load_task(str(not_task))
    gen = make_task({"test": 5}, name="gen", output_type="generate_until", doc_to_choice=None,
                    doc_to_target="{{choices[answer]}}", num_fewshot=0, metric_list=None)
    with pytest.raises(SieveError, match="output_type 'generate_until'"):
        load_task(str(gen))
    no_data = make_task({"test": 5}, name="no_data",
                        dataset_kwargs={"data_files": {"test": str(tmp_path / "nope.jsonl")}})
    with pytest.raises(SieveError, match="could not load lm-eval task"):
        load_task(str(no_data))
    tiny = make_task({"test": 2}, name="tiny", num_fewshot=0)
    with pytest.raises(SieveError, match="split is empty"):
        load_task(str(tiny))
    with pytest.raises(SieveError, match="max_test: Input should be greater than 0"):
        validate(SplitSpec, {"max_test": 0})


def test_unknown_task_name(sieve_cache: Path) -> None:
    with pytest.raises(SieveError, match="unknown task 'no_such_task_xyz'"):
        load_task("no_such_task_xyz")
