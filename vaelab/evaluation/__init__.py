"""Evaluation of trained models: importance-sampled log-likelihood, AIS and BDMC, inference gaps,
diagnostics, per-example scores, samples, and sample quality."""

