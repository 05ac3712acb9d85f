"""A base chosen by a search is validated, while tuning, on documents that search never scored."""

from __future__ import annotations

from pathlib import Path

from sieve.data.splits import SplitSpec, load_task
from sieve.search.rundir import RunDir
from sieve.tune.base import describe_source
from sieve.tune.run import tuning_split, with_base_defaults


def _contexts(examples) -> set[tuple[str, tuple[str, ...]]]:
    return {(e.context, e.continuations) for e in examples}


def test_tuning_validates_outside_the_searchs_documents(finished_run, tune_config):
    config = with_base_defaults(tune_config(finished_run, validation_examples=6))
    info = describe_source(finished_run)
    run = RunDir.existing(finished_run).config()
    split = tuning_split(config, info)
    assert split.seed == run.seed and split.max_validation == run.validation_examples
    assert split.max_selection == 6 and split.skip_selection == run.selection_examples
    workdir = Path(config.workdir)
    tuning = load_task(config.task, split, base_dir=workdir).selection
    searched = load_task(config.task, run.split(), base_dir=workdir)
    assert len(tuning) == 6
    assert not _contexts(tuning) & _contexts(searched.validation)
    wider = load_task(config.task, run.split().model_copy(update={"max_selection": 4}), base_dir=workdir).selection
    skipped = load_task(config.task, split.model_copy(update={"skip_selection": 4}), base_dir=workdir).selection
    assert not _contexts(wider) & _contexts(skipped)  # past a search's own selection documents too


def test_a_base_without_a_search_draws_with_the_tunings_seed(finished_run, tune_config):
    config = with_base_defaults(tune_config(finished_run, validation_examples=6, seed=3))
    info = describe_source(finished_run)
    other_task = info.__class__(**{**info.__dict__, "task": "elsewhere"})
    assert tuning_split(config, other_task) == SplitSpec(seed=3, max_calibration=config.train_examples,
                                                         max_validation=6, max_test=1)
    unsearched = info.__class__(**{**info.__dict__, "split": None})
    assert tuning_split(config, unsearched).max_selection == 0
