"""MPCTF: multi-party collaborative training of large language models.

``mpctf.run(config)`` runs a federation described by a YAML file (or dict) and returns its results.
"""

from typing import Any


def run(*args: Any, **kwargs: Any) -> Any:
    """Run a federation; see :func:`mpctf.api.run` (imported lazily so ``import mpctf`` stays light)."""
    from mpctf.api import run as _run

    return _run(*args, **kwargs)


__all__ = ["run"]
__version__ = "0.1.0"
