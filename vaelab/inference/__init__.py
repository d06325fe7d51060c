"""Inference: importance weights and gradient estimators, the objectives (bounds and losses),
KL schedules, and the per-example variational fit."""


# every objective registers itself in objectives.OBJECTIVES when its module is imported
from . import renyi  # noqa: F401,E402
