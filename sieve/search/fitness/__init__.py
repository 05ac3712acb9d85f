"""Search fitness: what a candidate is judged by (lower is better); one module per fitness, one
registry (:data:`sieve.search.fitness.base.FITNESS`)."""

from sieve.search.fitness.base import FITNESS, Fitness, FitnessInputs, FitnessSpec, Measurement, TaskFitness

__all__ = ["FITNESS", "Fitness", "FitnessInputs", "FitnessSpec", "Measurement", "TaskFitness"]
