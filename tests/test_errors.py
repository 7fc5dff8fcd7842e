import mpctf.errors as errors


def test_every_exit_code_has_help() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.MpctfError)]
    for cls in classes:
        assert cls.exit_code in errors.EXIT_CODES, cls.__name__
        assert errors.EXIT_CODES[cls.exit_code].strip()
