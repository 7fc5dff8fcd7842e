"""Aggregation strategies. Importing this package registers every built-in strategy (one module each)."""

from mpctf.aggregation import (  # noqa: F401  (registration side effect)
    dynamic,
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fedit,
    fedprox,
    fedyogi,
    ffa_lora,
    flexlora,
    flora,
    hetlora,
    krum,
    median,
    multikrum,
    norm_bounded,
    scaffold,
    trimmed_mean,
)
from mpctf.aggregation.base import STRATEGIES, PartyHooks, PartySpec, Strategy, StrategyParams

__all__ = ["STRATEGIES", "PartyHooks", "PartySpec", "Strategy", "StrategyParams"]
