"""The model registry: every family registers its builder under a short name."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..core.registry import Registry, check_keywords, keywords

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def build_model(name: str, event_shape: tuple[int, ...], **options: Any) -> nn.Module:
    """Builds the model registered as ``name`` for data of shape ``event_shape``; ``options`` are
    the builder's keywords (the fields of ``config.ModelConfig`` that the family uses). An
    unknown keyword is an error (UnknownOptionError, a TypeError) that names it."""
    builder = MODELS[name]
    check_keywords(f"build_model({name!r}, ...)", options, keywords(builder, skip=("event_shape",)))
    return builder(tuple(event_shape), **options)
