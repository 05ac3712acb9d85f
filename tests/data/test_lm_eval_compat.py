"""Each lm-eval internal sieve relies on, checked against the locked lm-eval: when a new version
moves one of them, these fail by name instead of sieve silently rendering different prompts."""

from pathlib import Path

from sieve.data import lm_eval_compat
from sieve.data.splits import load_lm_eval_task
from sieve.data.task_spec import resolve_task


def test_template_cache_patches_apply_template_and_renders_identically():
    from lm_eval import utils

    assert callable(getattr(utils, "apply_template", None)) and getattr(utils, "env", None) is not None
    original = utils.apply_template
    doc = {"text": "a film", "label": 1}
    expected = original("Review: {{text}}\nSentiment:", doc)
    with lm_eval_compat.compiled_templates():
        assert utils.apply_template is not original
        assert utils.apply_template("Review: {{text}}\nSentiment:", doc) == expected
    assert utils.apply_template is original


def test_first_n_sampler_is_recognised_and_its_pool_is_reachable(sieve_cache: Path):
    task = load_lm_eval_task(resolve_task("rotten_tomatoes"))  # fewshot_config: sampler: first_n
    sampler = task.sampler
    assert lm_eval_compat.is_first_n(sampler)
    pool = lm_eval_compat.sampler_documents(sampler)
    assert len(pool) > 4 and {"text", "label"} <= set(pool[0])
    lm_eval_compat.replace_sampler_documents(sampler, pool[:10])
    assert lm_eval_compat.sampler_documents(sampler) == pool[:10]


def test_fewshot_recording_sees_what_prompts_show_and_is_removed_after(make_task):
    task = load_lm_eval_task(resolve_task(str(make_task({"train": 20, "test": 6}))))  # random sampler
    assert not lm_eval_compat.is_first_n(task.sampler)
    shown: list[dict] = []
    doc = list(task.test_docs())[0]
    with lm_eval_compat.recording_fewshot(task, shown.extend) as recording:
        context = task.fewshot_context(doc=doc, num_fewshot=2)
        recording(False)
        task.fewshot_context(doc=doc, num_fewshot=2)
    assert len(shown) == 2 and all(d["question"] in context for d in shown)
    assert "sample" not in vars(task.sampler)  # the class's own method again
