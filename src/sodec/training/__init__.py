"""Rate-annealing training (paper Sec. 3.4): one trainer, the stages are data."""

from .stages import StageConfig, load_schedule, load_stage

__all__ = ["StageConfig", "load_schedule", "load_stage"]
