"""The ServerApp: builds a :class:`FlowerBackend` and hands it to the driver named in the run config.

The driver is any ``package.module:function`` with the signature ``driver(backend, settings) -> None``, where
``settings`` is the ``dict[str, str]`` the launcher was given. It runs the rounds; this module only transports.

An :class:`~mpctf.errors.MpctfError` raised by the driver is re-raised with its class name in front, because
Flower keeps only ``str(exception)`` in the run's status details: the launcher reads the name back and raises the
same error family, so the CLI exits with the right code.
"""

from __future__ import annotations

import json
import logging
import pkgutil
from collections.abc import Callable, Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from mpctf.errors import MpctfError
from mpctf.runtime.base import Backend
from mpctf.runtime.flower import protocol
from mpctf.runtime.flower.backend import FlowerBackend

Driver = Callable[[Backend, dict[str, str]], None]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Wait for the parties, then run the driver on a Flower backend."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request otherwise
    driver, settings, min_parties, party_wait_s = read_run_config(context.run_config)
    # With node authentication, each party name is bound to the node id of the key registered for it.
    backend = FlowerBackend(
        grid, registered=protocol.party_nodes_of(context.run_config.get(protocol.RUN_PARTY_NODES))
    )
    try:
        backend.wait_for_parties(min_parties, party_wait_s)
        driver(backend, settings)
    except MpctfError as exc:
        raise RuntimeError(protocol.tag_error(exc)) from exc
    finally:
        backend.close()


def read_run_config(config: Mapping[str, object]) -> tuple[Driver, dict[str, str], int, float]:
    """The driver function, its settings, and the party wait of one run's config."""
    driver = pkgutil.resolve_name(str(config[protocol.RUN_DRIVER]))
    settings = json.loads(str(config[protocol.RUN_SETTINGS]))
    return driver, settings, int(config[protocol.RUN_MIN_PARTIES]), float(config[protocol.RUN_PARTY_WAIT_S])
