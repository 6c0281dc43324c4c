"""Build any model of this package by name (the worker, the evaluator and tests use it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stream.errors import ConfigError

if TYPE_CHECKING:
    from model.step import RankingModel

__all__ = ["create_model", "MODEL_NAMES"]

MODEL_NAMES: tuple[str, ...] = ("interest", "interest-static", "popular", "imf", "itemknn")


def create_model(name: str = "interest", seed: int = 0, **kw: Any) -> RankingModel:
    """A fresh model called ``name``; ``kw`` goes to its constructor.

    ``interest-static`` is the interest model with online fine-tuning off
    (useful only after some training, e.g. the evaluator's warm-up, which
    trains it and then calls ``freeze()``).
    """
    # Imported here so that command-line parsing does not pay for torch.
    from model.baselines import IncrementalMF, SequentialItemKNN
    from model.interest import InterestModel
    from model.popular import MostPopular

    if name == "interest":
        return InterestModel(seed=seed, **kw)
    if name == "interest-static":
        return InterestModel(seed=seed, **kw)
    if name == "popular":
        return MostPopular(**kw)
    if name == "imf":
        return IncrementalMF(seed=seed, **kw)
    if name == "itemknn":
        return SequentialItemKNN(**kw)
    raise ConfigError(f"unknown model {name!r} (choose from {', '.join(MODEL_NAMES)})")
