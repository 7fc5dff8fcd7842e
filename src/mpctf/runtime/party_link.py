"""The long-lived party worker and the call that reaches it.

Flower serves every message with a fresh ClientApp process, so a party's model cannot live there: it would be
reloaded each round. Instead each party runs one worker process that builds its :data:`PartyHandler` once (this is
where the model loads) and serves requests over ``multiprocessing.connection`` (authenticated with a shared key,
payloads above 2 GiB included). The ClientApp only forwards bytes with :func:`call`.

Requests are handled one at a time, by the main thread (some training stacks expect it); a handler exception
becomes a one-line error reply and the worker keeps serving.

Run it as ``python -m mpctf.runtime.party_link --factory pkg.mod:make_handler --arg key=value ... --port P``; the
authentication key comes from ``--authkey-file`` (readable by its owner only) or the ``MPCTF_PARTY_AUTHKEY``
environment variable (hex), never from the command line, where other users could read it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pkgutil
import queue
import stat
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener, answer_challenge, deliver_challenge
from pathlib import Path

from mpctf.runtime.base import PartyHandler

AUTHKEY_ENV = "MPCTF_PARTY_AUTHKEY"

__all__ = [
    "AUTHKEY_ENV",
    "AuthenticationError",
    "RemoteError",
    "call",
    "command",
    "load_factory",
    "one_line",
    "read_authkey",
    "serve",
    "write_authkey",
]

_OK = b"ok"
_ERROR = b"error"

log = logging.getLogger("mpctf.party_link")


class RemoteError(RuntimeError):
    """The party handler raised; the message is the worker's one-line description of the failure."""


def load_factory(ref: str) -> Callable[..., PartyHandler]:
    """Import ``package.module:function`` and return the function."""
    if ":" not in ref:
        raise ValueError(f"factory {ref!r} must have the form package.module:function")
    factory = pkgutil.resolve_name(ref)
    if not callable(factory):
        raise ValueError(f"factory {ref!r} is not callable")
    return factory


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line, the form every error reply takes."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def serve(
    factory: str,
    factory_kwargs: dict[str, str],
    host: str,
    port: int,
    authkey: bytes,
    *,
    ready_file: Path | None = None,
    exit_with_parent: bool = False,
) -> None:
    """Build the handler once, then answer requests on ``host:port`` until killed.

    ``port`` 0 picks a free port; the address actually bound is logged and written, with the worker's pid, to
    ``ready_file`` (JSON, replaced atomically) once the worker accepts requests. With ``exit_with_parent`` the
    worker exits once the process that started it is gone (a launcher killed with SIGKILL cannot stop it).
    """
    if exit_with_parent:
        threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    handler = load_factory(factory)(**factory_kwargs)
    requests: queue.Queue[tuple[Connection, bytes]] = queue.Queue()
    # The listener itself does no authentication: each connection's thread does, so a client that connects and
    # stalls cannot hold up the others (Listener(authkey=...) would run the handshake inside accept()).
    with Listener((host, port)) as listener:
        bound_host, bound_port = listener.address
        threading.Thread(target=_accept_forever, args=(listener, authkey, requests), daemon=True).start()
        address = f"{bound_host}:{bound_port}"
        if ready_file is not None:
            _write_atomically(ready_file, json.dumps({"address": address, "pid": os.getpid()}))
        log.info("party worker ready on %s (pid %d)", address, os.getpid())
        while True:
            # Wake up now and then: a signal (Ctrl-C, SIGTERM with a handler) that the kernel hands to one of the
            # threads torch or gloo started only sets a flag, which the main thread reads when it next runs
            # Python; blocked in get() for good, it would ignore the signal until a request came.
            try:
                conn, body = requests.get(timeout=0.5)
            except queue.Empty:
                continue
            _answer(handler, conn, body)


def _exit_with_parent(parent: int) -> None:
    # An orphan is re-parented (to init or a subreaper), so a changed parent id means the launcher is gone.
    while os.getppid() == parent:
        time.sleep(1.0)
    log.warning("the launcher (pid %d) is gone; exiting", parent)
    os._exit(1)


def _accept_forever(
    listener: Listener, authkey: bytes, requests: queue.Queue[tuple[Connection, bytes]]
) -> None:
    while True:
        try:
            conn = listener.accept()
        except OSError as exc:  # e.g. out of file descriptors: keep serving the connections that work
            log.warning("accept failed: %s", one_line(exc))
            time.sleep(0.1)
            continue
        threading.Thread(target=_read_request, args=(conn, authkey, requests), daemon=True).start()


def _read_request(conn: Connection, authkey: bytes, requests: queue.Queue[tuple[Connection, bytes]]) -> None:
    try:
        deliver_challenge(conn, authkey)
        answer_challenge(conn, authkey)
        requests.put((conn, conn.recv_bytes()))
    except (OSError, EOFError, AuthenticationError) as exc:  # a bad client must not stop the worker
        log.warning("dropped a connection: %s", one_line(exc))
        conn.close()


def _answer(handler: PartyHandler, conn: Connection, payload: bytes) -> None:
    started = time.perf_counter()
    try:
        reply, status = handler(payload), _OK
    except Exception as exc:  # any handler failure becomes the party's error reply, the worker lives on
        log.error("handler failed:\n%s", traceback.format_exc())
        reply, status = one_line(exc).encode(), _ERROR
    try:
        conn.send_bytes(status)
        conn.send_bytes(reply)
    except OSError as exc:  # the caller gave up (timeout) and closed its end
        log.warning("could not deliver a reply: %s", one_line(exc))
    finally:
        conn.close()
    log.info(
        "request of %d bytes answered (%s, %d bytes) in %.2f s",
        len(payload),
        status.decode(),
        len(reply),
        time.perf_counter() - started,
    )


def call(
    address: str, authkey: bytes, payload: bytes, timeout_s: float, *, max_reply_bytes: int | None = None
) -> bytes:
    """Send ``payload`` to the worker at ``host:port`` and return its reply.

    Raises :class:`RemoteError` when the handler failed, ``TimeoutError`` when no reply came within
    ``timeout_s``, ``ConnectionError``/``EOFError`` when the worker is unreachable or died mid-request,
    ``AuthenticationError`` when the keys differ, ``ValueError`` when the reply is longer than
    ``max_reply_bytes`` (it is refused before it is read, so an oversized reply cannot exhaust memory).
    """
    host, _, port = address.rpartition(":")
    with Client((host, int(port)), authkey=authkey) as conn:
        conn.send_bytes(payload)
        if not conn.poll(timeout_s):
            raise TimeoutError(f"party worker at {address} gave no reply within {timeout_s:g} s")
        status = conn.recv_bytes(64)
        try:
            body = conn.recv_bytes(max_reply_bytes)
        except OSError as exc:
            if max_reply_bytes is not None and "bad message length" in str(exc):
                raise ValueError(
                    f"reply from the party worker at {address} is larger than {max_reply_bytes} bytes"
                ) from None
            raise
    if status != _OK:
        raise RemoteError(body.decode(errors="replace"))
    return body


def read_authkey(path: Path) -> bytes:
    """Read a key file, refusing one that others can read (the key guards the worker)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(
            f"{path} must be readable by its owner only (chmod 600), mode is {oct(mode & 0o777)}"
        )
    return path.read_bytes()


def write_authkey(path: Path, key: bytes) -> None:
    """Write a key file readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def command(
    factory: str,
    factory_kwargs: Mapping[str, str],
    *,
    authkey_file: Path,
    ready_file: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    exit_with_parent: bool = True,
) -> list[str]:
    """The command line that starts a worker with this interpreter (see :func:`main`)."""
    argv = [sys.executable, "-m", "mpctf.runtime.party_link", "--factory", factory, "--host", host]
    argv += ["--port", str(port), "--authkey-file", str(authkey_file), "--ready-file", str(ready_file)]
    if exit_with_parent:
        argv.append("--exit-with-parent")
    for key, value in factory_kwargs.items():
        argv += ["--arg", f"{key}={value}"]
    return argv


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mpctf.runtime.party_link", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--factory", required=True, help="package.module:function returning the party handler"
    )
    parser.add_argument(
        "--arg", action="append", default=[], metavar="KEY=VALUE", help="factory keyword argument"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (see --ready-file)")
    parser.add_argument("--authkey-file", type=Path, help=f"key file (mode 600); else ${AUTHKEY_ENV} (hex)")
    parser.add_argument("--ready-file", type=Path, help="written with the bound address once ready")
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="exit once the process that started this one is gone"
    )
    return parser.parse_args(argv)


def _parse_kwargs(pairs: list[str]) -> dict[str, str]:
    kwargs: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--arg {pair!r} must have the form KEY=VALUE")
        kwargs[key] = value
    return kwargs


def _authkey_from(args: argparse.Namespace) -> bytes:
    if args.authkey_file is not None:
        return read_authkey(args.authkey_file)
    if AUTHKEY_ENV in os.environ:
        return bytes.fromhex(os.environ[AUTHKEY_ENV])
    raise SystemExit(f"give --authkey-file or set {AUTHKEY_ENV}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point of the party worker."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    serve(
        args.factory,
        _parse_kwargs(args.arg),
        args.host,
        args.port,
        _authkey_from(args),
        ready_file=args.ready_file,
        exit_with_parent=args.exit_with_parent,
    )


if __name__ == "__main__":
    main()
