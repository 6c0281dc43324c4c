"""Every model of this package by name: a registry the worker, the evaluator and tests use.

Each entry builds a fresh model from its constructor arguments (imported only
when built, so that parsing a command line never pays for torch).
``create_serving_model`` is what a worker serves: ``$INTEREST_MODEL`` and the
torch thread count of ``$INTEREST_TORCH_THREADS``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from core.errors import ConfigError

if TYPE_CHECKING:
    from model.step import RankingModel

__all__ = [
    "ModelSpec",
    "register",
    "create_model",
    "model_spec",
    "create_serving_model",
    "MODEL_NAMES",
    "MODEL_ENV",
    "THREADS_ENV",
]

MODEL_ENV = "INTEREST_MODEL"
THREADS_ENV = "INTEREST_TORCH_THREADS"


@dataclass(frozen=True)
class ModelSpec:
    """How to build one model. ``static``: the evaluator stops its fine-tuning after warm-up."""

    name: str
    build: Callable[..., RankingModel]
    help: str
    static: bool = False
    evaluated: bool = True  # part of ``evaluate``'s default set


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Add ``spec`` to the registry (a name is registered once)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def _interest(**kw: Any) -> RankingModel:
    from model.interest.model import InterestModel

    return InterestModel(**kw)


def _popular(seed: int = 0, **kw: Any) -> RankingModel:
    from model.baselines.popular import MostPopular

    return MostPopular(**kw)


def _popular_decayed(seed: int = 0, **kw: Any) -> RankingModel:
    from model.baselines.popular import DecayedPopularity

    return DecayedPopularity(**kw)


def _imf(**kw: Any) -> RankingModel:
    from model.baselines.classic import IncrementalMF

    return IncrementalMF(**kw)


def _itemknn(seed: int = 0, **kw: Any) -> RankingModel:
    from model.baselines.classic import SequentialItemKNN

    return SequentialItemKNN(**kw)


register(ModelSpec("interest", _interest, "the interest model, fine-tuned online"))
register(
    ModelSpec(
        "interest-static",
        _interest,
        "the interest model, fine-tuning stopped after warm-up",
        static=True,
    )
)
register(
    ModelSpec(
        "interest-nocontent",
        lambda **kw: _interest(content=False, **kw),
        "the interest model without item content (ablation)",
    )
)
register(ModelSpec("popular", _popular, "most popular items (never forgets)"))
register(ModelSpec("imf", _imf, "incremental matrix factorisation (ISGD)"))
register(ModelSpec("itemknn", _itemknn, "sequential item-kNN over recent items"))
register(
    ModelSpec(
        "popular-decayed", _popular_decayed, "popularity fading with a half-life", evaluated=False
    )
)

MODEL_NAMES: tuple[str, ...] = tuple(name for name, s in _REGISTRY.items() if s.evaluated)


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name`` (ConfigError when there is none)."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ConfigError(f"unknown model {name!r} (choose from {', '.join(_REGISTRY)})")
    return spec


def create_model(name: str = "interest", seed: int = 0, **kw: Any) -> RankingModel:
    """A fresh model called ``name``; ``seed`` and ``kw`` go to its constructor."""
    return model_spec(name).build(seed=seed, **kw)


def create_serving_model(
    name: str | None = None, env: Mapping[str, str] | None = None
) -> RankingModel:
    """The model a worker serves: ``name``, else ``$INTEREST_MODEL``, else ``interest``.

    Torch gets one intra-op thread unless ``$INTEREST_TORCH_THREADS`` says
    otherwise: per-batch tensors are small, and on a small box a second thread
    only fights librdkafka's threads (2 cores, 20k events: 1,270 -> 7,200 events/s).
    """
    env = os.environ if env is None else env
    threads = env.get(THREADS_ENV, "1")
    try:
        n_threads = int(threads)
        if n_threads < 1:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{THREADS_ENV} must be a positive integer, got {threads!r}") from None
    model = create_model(name or env.get(MODEL_ENV) or "interest")
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n_threads)
    return model
