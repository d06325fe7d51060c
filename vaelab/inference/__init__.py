"""Inference: importance weights and gradient estimators, the objectives (bounds and losses),
KL schedules, and the per-example variational fit."""

