"""Training options that can fail, checked before the model loads: a typo costs seconds, not minutes."""

from __future__ import annotations

from traintrain.training.optimizers import check_optimizer
from traintrain.training.run_logs import check_logging


def check_training_options(config) -> None:
    check_optimizer(config)
    check_logging(config)
