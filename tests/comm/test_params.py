import math

import pytest

from mpctf.comm.params import check_interval


def test_value_inside_is_returned() -> None:
    assert check_interval("fraction", 0.5, 0.0, 1.0, low_open=True) == 0.5
    assert check_interval("level", 22, 1, 22) == 22


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        (("fraction", 0.0, 0.0, 1.0), {"low_open": True}, "`fraction` must be in (0, 1], got 0.0"),
        (("beta_2", 1.2, 0.0, 1.0), {"high_open": True}, "`beta_2` must be in [0, 1), got 1.2"),
        (("level", 23, 1, 22), {}, "`level` must be in [1, 22], got 23"),
        (("block_size", 0, 1), {}, "`block_size` must be in [1, inf), got 0"),
        (("x", math.inf, 0), {}, "`x` must be in [0, inf), got inf"),
    ],
)
def test_message_names_field_interval_and_value(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as info:
        check_interval(*args, **kwargs)
    assert str(info.value) == message
