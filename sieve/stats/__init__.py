"""Calibration statistics: containers (:mod:`.channel`), hooked collection (:mod:`.collect`) and
the cached, fingerprinted glue from data to statistics (:mod:`.calibrate`)."""

from sieve.stats.channel import SOURCES, CalibrationStats, ChannelStats, MatrixStats
from sieve.stats.collect import collect_stats, collect_stats_sequential

__all__ = ["SOURCES", "CalibrationStats", "ChannelStats", "MatrixStats", "collect_stats", "collect_stats_sequential"]
