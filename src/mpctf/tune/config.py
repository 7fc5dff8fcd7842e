"""The ``tune:`` section of a run's configuration: the search space and the successive-halving budget.

``mpctf launch`` ignores it; ``mpctf tune`` reads it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator


class TuneConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Dotted config key → the values to try, e.g. ``training.lr: [0.001, 0.003]`` or
    #: ``federation.strategy: [{name: fedavg}, {name: fedavgm, momentum: 0.5}]``.
    space: dict[str, list[Any]] = Field(min_length=1)
    #: Configurations tried: the whole grid when it is no larger, else a seeded sample of it.
    trials: PositiveInt = 8
    #: Each rung keeps the best 1/eta of the trials and runs them eta times as many rounds.
    eta: int = Field(2, ge=2)
    #: Rounds every trial runs in the first rung; the last rung runs ``federation.rounds``.
    min_rounds: PositiveInt = 1

    @field_validator("space")
    @classmethod
    def _values_listed(cls, space: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in space.items():
            if not values:
                raise ValueError(f"`{key}` lists no values to try")
            if key == "tune" or key.startswith("tune."):
                raise ValueError(f"`{key}`: the search cannot change its own settings")
        return space
