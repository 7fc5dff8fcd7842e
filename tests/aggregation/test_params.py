from typing import Annotated

import pytest
from pydantic import BaseModel

from mpctf.aggregation.params import Count, Decay, NonNegative, Positive, in_range


class Knobs(BaseModel):
    beta_2: Decay = 0.5
    eta: Positive = 1.0
    mu: NonNegative = 0.0
    f: Count = 0
    share: Annotated[float, in_range(0.0, 1.0, low_open=True)] = 0.5


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("beta_2", 1.2, r"`beta_2` must be in \[0, 1\), got 1.2"),
        ("beta_2", float("nan"), r"`beta_2` must be in \[0, 1\), got nan"),
        ("eta", 0.0, "`eta` must be > 0, got 0.0"),
        ("mu", -0.5, "`mu` must be >= 0, got -0.5"),
        ("f", -1, "`f` must be >= 0, got -1"),
        ("share", 0.0, r"`share` must be in \(0, 1\], got 0.0"),
    ],
)
def test_messages_name_the_key_the_bound_and_the_value(key: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Knobs(**{key: value})


def test_bounds_themselves_are_accepted_where_closed() -> None:
    knobs = Knobs(beta_2=0.0, mu=0.0, f=0, share=1.0)
    assert knobs.share == 1.0 and knobs.beta_2 == 0.0
