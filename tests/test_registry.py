import pytest

from mpctf.registry import Registry


def test_register_get_and_duplicates() -> None:
    reg: Registry[object] = Registry("thing")

    @reg.register("alpha")
    class A:
        pass

    assert reg.get("alpha") is A and A.registered_name == "alpha" and reg.names() == ["alpha"]
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(type("B", (), {}))
    with pytest.raises(ValueError, match="lower_snake_case"):
        reg.register("Bad-Name")
    with pytest.raises(KeyError, match="unknown thing 'beta'; known: alpha"):
        reg.get("beta")
