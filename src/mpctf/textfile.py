"""Reading a user's text file: UTF-8 (a leading byte-order mark dropped), or one line naming ``file:line``."""

from __future__ import annotations

from pathlib import Path


def read_utf8(path: Path, error: type[Exception]) -> str:
    """The text of ``path``; ``error`` naming the file (and the line of the first byte that is not UTF-8)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise error(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None
