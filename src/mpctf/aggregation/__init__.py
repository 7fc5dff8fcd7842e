"""Aggregation strategies. Importing this package registers every built-in strategy."""

from mpctf.aggregation import fedavg  # noqa: F401  (registration side effect)
from mpctf.aggregation.base import STRATEGIES, PartyHooks, PartySpec, Strategy, StrategyParams

__all__ = ["STRATEGIES", "PartyHooks", "PartySpec", "Strategy", "StrategyParams"]
