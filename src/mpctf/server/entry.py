"""The server's entry point when a runtime (the Flower ServerApp) hosts the round loop in its own process."""

from __future__ import annotations

from pathlib import Path

from mpctf.config import load_config
from mpctf.runtime.base import Backend


def drive(backend: Backend, settings: dict[str, str]) -> None:
    """Run the federation described by ``settings['config-path']`` into ``settings['run-dir']``.

    ``settings['resume'] == 'true'`` continues from the run directory's last checkpoint.
    """
    from mpctf.server.loop import RoundLoop

    config = load_config(settings["config-path"])
    RoundLoop(config, backend, Path(settings["run-dir"])).run(resume=settings.get("resume") == "true")
