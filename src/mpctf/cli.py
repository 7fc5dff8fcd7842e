"""The ``mpctf`` command. Every expected failure prints one line per problem and exits with its family's code."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperArgument, TyperGroup

from mpctf.errors import EXIT_CODES, ConfigError, Interrupted, MpctfError, StorageError


def _keep_argument_help() -> None:
    """Typer sets an argument's help before calling click's ``Parameter.__init__``, which newer click versions
    reset to None: ``--help`` then shows no text for CONFIG, RUN_DIR or OUT_DIR. Set it again afterwards."""
    if TyperArgument(param_decls=["probe"], help="probe").help == "probe":
        return
    init = TyperArgument.__init__

    def __init__(self: TyperArgument, *args: Any, help: str | None = None, **kwargs: Any) -> None:
        init(self, *args, help=help, **kwargs)
        self.help = help

    TyperArgument.__init__ = __init__  # type: ignore[method-assign]


_keep_argument_help()

err = Console(stderr=True, soft_wrap=True, markup=False, emoji=False, highlight=False)
out = Console(soft_wrap=True, markup=False, emoji=False, highlight=False)


def _print_error(message: str) -> None:
    """One ``error:`` line per line of ``message``; user text is printed as is, never read as markup."""
    for line in message.split("\n"):
        if line.strip():
            err.print(f"[red]error:[/red] {escape(_visible(line))}", markup=True, soft_wrap=True)


def _visible(text: str) -> str:
    """``text`` with control characters and line separators (U+0085, U+2028...) written as escapes."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


class OneLineErrors(TyperGroup):
    """Usage errors (a missing argument, an option's bad value) as one ``error:`` line and exit code 2, like
    every other expected failure, instead of click's usage box."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            _print_error(exc.format_message().replace("\n", " ") + hint)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            _print_error(exc.format_message().replace("\n", " "))
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            _print_error("interrupted")
            sys.exit(Interrupted.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"mpctf {version('mpctf')}")
        raise typer.Exit()


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="MPCTF: multi-party collaborative training of large language models.\n\nExit codes: "
    + "; ".join(f"{code} {text}" for code, text in EXIT_CODES.items()),
)


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_version, help="Print the version and exit.")
    ] = False,
) -> None:
    """MPCTF: multi-party collaborative training of large language models."""


ConfigArg = Annotated[Path, typer.Argument(help="The run's YAML config.", show_default=False)]


def _fail(exc: MpctfError) -> None:
    _print_error(str(exc) or type(exc).__name__)
    raise typer.Exit(exc.exit_code)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn MpctfError and Ctrl-C into one-line messages and exit codes instead of tracebacks."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MpctfError as exc:
            _fail(exc)
        except OSError as exc:
            if exc.filename is None:  # a socket or a process, not a file: a bug, shown with its traceback
                raise
            # A folder or file the command could not create, read or write.
            _fail(StorageError(f"{exc.filename}: {exc.strerror or exc}"))
        except KeyboardInterrupt:
            _fail(
                Interrupted("interrupted; processes stopped, completed rounds are kept in the run directory")
            )

    return wrapper


@app.command()
@friendly
def validate(config: ConfigArg) -> None:
    """Check a config as launch would (model, data, rules): every problem on its own line, exit code 2 if any."""
    from mpctf.config import load_config

    cfg = load_config(config)
    check_run_dir(cfg, None)
    preflight_or_fail(cfg)
    out.print(
        f"{config}: valid ({len(cfg.parties)} parties, {cfg.federation.rounds} rounds, "
        f"strategy {cfg.federation.strategy.name}, backend {cfg.backend.name})"
    )


@app.command()
@friendly
def plan(
    config: ConfigArg,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show each party's data volume and per-round chunk plan (for data readable on this machine)."""
    from mpctf.config import load_config
    from mpctf.party.planning import local_plans

    plans = local_plans(load_config(config))
    if as_json:
        out.print_json(json.dumps({name: vars(p) for name, p in plans.items()}))
        return
    out.print(plan_table(list(plans.values())))


def config_and_run_dir(
    config: Path | None, resume: Path | None, run_dir: Path | None
) -> tuple[Any, Path | None]:
    """The config and run directory of ``launch`` and ``server``: a new run from CONFIG (in ``--run-dir``, or a new
    folder under ``output_dir`` when ``None``), or ``--resume RUN_DIR`` with the config the run recorded."""
    from mpctf.config import load_config

    if resume is not None:
        if not (resume / "config.yaml").is_file():
            raise ConfigError(f"--resume: {resume} is not a run directory (no config.yaml)")
        if run_dir is not None and run_dir.resolve() != resume.resolve():
            raise ConfigError(f"--run-dir {run_dir} and --resume {resume} name different run directories")
        return load_config(resume / "config.yaml"), resume
    if config is None:
        raise ConfigError("give a CONFIG file, or --resume RUN_DIR")
    cfg = load_config(config)
    check_run_dir(cfg, run_dir)
    return cfg, run_dir


def _stopped_run(exc: BaseException, run_dir: Path, *, remove_if_empty: bool) -> MpctfError:
    """The error a stopped launch ends with: where its completed rounds are and the command that continues them,
    or, when it completed none, a run directory it made itself removed (only its logs would be lost: kept)."""
    import shutil

    completed = (run_dir / "checkpoints" / "latest.json").is_file()
    if completed:
        where = f"; completed rounds are kept in {run_dir}; continue with: mpctf launch --resume {run_dir}"
    elif remove_if_empty and run_dir.is_dir() and not any((run_dir / "logs").glob("*")):
        shutil.rmtree(run_dir, ignore_errors=True)
        where = "; no round completed, the run directory was removed"
    else:
        where = f"; no round completed (logs in {run_dir})" if run_dir.is_dir() else ""
    if isinstance(exc, MpctfError):
        exc.args = (f"{exc}{where}",)
        return exc
    return Interrupted(f"interrupted; processes stopped{where}")


def preflight_or_fail(config: Any) -> None:
    """``ConfigError`` listing every problem :func:`mpctf.preflight.preflight` finds (what launch would hit)."""
    from mpctf.preflight import preflight

    if problems := preflight(config):
        raise ConfigError("\n".join(problems))


def check_run_dir(config: Any, run_dir: Path | None) -> None:
    """``ConfigError`` when the run directory (``--run-dir``, else under ``output_dir``) cannot be a folder."""
    where, path = (
        ("--run-dir", run_dir) if run_dir is not None else ("config key `output_dir`", config.output_dir)
    )
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"{where}: {blocker} is a file, not a folder")


def plan_table(plans: list[Any]) -> Table:
    table = Table(title="Per-round data plan")
    for col in (
        "party",
        "samples",
        "tokens",
        "chunk",
        "micro-batch",
        "accum.",
        "rounds/epoch",
        "peak/free",
    ):
        table.add_column(col)
    for p in plans:
        mem = "—"
        if p.est_peak_bytes is not None and p.available_bytes is not None:
            mem = f"{p.est_peak_bytes / 2**30:.1f}/{p.available_bytes / 2**30:.1f} GiB"
        table.add_row(
            p.party,
            str(p.num_samples),
            str(p.num_tokens),
            str(p.chunk_samples),
            str(p.micro_batch),
            str(p.grad_accum),
            str(p.rounds_per_epoch),
            mem,
        )
    return table


@app.command()
@friendly
def launch(
    config: Annotated[Path | None, typer.Argument(help="The run's YAML config.", show_default=False)] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue this run directory from its last round.")
    ] = None,
    run_dir: Annotated[
        Path | None, typer.Option(help="Where to write the run (default: output_dir/name-time).")
    ] = None,
) -> None:
    """Start the whole federation (server and every party), show progress, tear everything down at the end."""
    from mpctf.api import new_run_dir, run
    from mpctf.party.planning import local_plans
    from mpctf.report.progress import ProgressView

    cfg, target = config_and_run_dir(config, resume, run_dir)
    preflight_or_fail(cfg)
    try:
        out.print(plan_table(list(local_plans(cfg).values())))
    except MpctfError as exc:  # parties' data may live on other hosts; the server plans from their reports
        err.print(f"(no local plan: {exc})")
    target = target or new_run_dir(cfg)
    fresh = not target.exists()
    try:
        with ProgressView(cfg.federation.rounds, err) as view:
            result = run(cfg, run_dir=target, resume=resume is not None, listeners=[view])
    except (MpctfError, KeyboardInterrupt) as exc:
        raise _stopped_run(exc, target, remove_if_empty=fresh) from None
    out.print(f"run directory: {result.run_dir}")
    # A resumed run's result holds only the rounds it ran: no round 0, so no "before training".
    before = result.initial_accuracy
    start = f"{before:.4f} before training → " if before is not None else ""
    final = f"{result.final_accuracy:.4f}" if result.final_accuracy is not None else "n/a"
    out.print(
        f"accuracy: {start}{final} after round {result.rounds[-1]['round']}; "
        f"report: {result.run_dir / 'report.md'}"
    )


@app.command()
@friendly
def server(
    config: Annotated[Path | None, typer.Argument(help="The run's YAML config.", show_default=False)] = None,
    host: Annotated[str, typer.Option(help="Address the SuperLink listens on.")] = "0.0.0.0",
    port: Annotated[int, typer.Option(help="Port the SuperLink listens on.")] = 9093,
    certs_dir: Annotated[
        Path | None,
        typer.Option(
            "--certs", help="Folder made by `mpctf certs`: TLS on, and only parties with a key there join."
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            help="Allow no TLS and no party keys on a non-loopback address (trusted networks only)."
        ),
    ] = False,
    run_dir: Annotated[Path | None, typer.Option(help="Where to write the run.")] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue this run directory from its last round (as `launch --resume`)."),
    ] = None,
) -> None:
    """Start only the server side; parties join with `mpctf party` from their own hosts."""
    from mpctf.api import new_run_dir
    from mpctf.errors import ConfigError
    from mpctf.launch.federation import serve_server
    from mpctf.report.progress import ProgressView
    from mpctf.report.render import render_report

    cfg, chosen = config_and_run_dir(config, resume, run_dir)
    if certs_dir is None and host not in ("127.0.0.1", "localhost", "::1") and not insecure:
        raise ConfigError(
            f"--host {host}: parties on other hosts need TLS and party keys; pass --certs DIR (from `mpctf certs`), "
            "or --insecure on a trusted network"
        )
    preflight_or_fail(cfg)
    target = chosen or new_run_dir(cfg)
    keys = _party_keys(certs_dir, cfg.party_names)
    with ProgressView(cfg.federation.rounds, err) as view:
        result = serve_server(
            cfg,
            target,
            host=host,
            port=port,
            tls=_server_tls(certs_dir),
            party_public_keys=keys,
            resume=resume is not None,
            listeners=[view],
        )
    render_report(target)
    out.print(f"run directory: {result.run_dir}")


def _party_keys(certs_dir: Path | None, parties: list[str]) -> dict[str, Path] | None:
    from mpctf.errors import ConfigError

    if certs_dir is None:
        return None
    keys = {p: certs_dir / "parties" / f"{p}.pub" for p in parties}
    missing = [str(k) for k in keys.values() if not k.is_file()]
    if missing:
        raise ConfigError(
            f"--certs: no public key for {', '.join(missing)} (run `mpctf certs` with every --party)"
        )
    return keys


def _server_tls(certs_dir: Path | None) -> Any:
    from mpctf.errors import ConfigError
    from mpctf.runtime.flower.commands import ServerTls

    if certs_dir is None:
        return None
    files = {
        "ca_cert": certs_dir / "ca.crt",
        "cert": certs_dir / "server.pem",
        "key": certs_dir / "server.key",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise ConfigError(f"--certs: missing {', '.join(missing)} (create them with `mpctf certs`)")
    return ServerTls(**files)


@app.command()
@friendly
def party(
    config: ConfigArg,
    name: Annotated[str, typer.Option("--name", help="Which party of the config this host is.")],
    server_address: Annotated[str, typer.Option("--server", help="The server's HOST:PORT.")],
    root_cert: Annotated[
        Path | None, typer.Option(help="The federation's ca.crt (TLS); omit only on a trusted LAN.")
    ] = None,
    auth_key: Annotated[
        Path | None, typer.Option(help="This party's private key from `mpctf certs` (parties/NAME).")
    ] = None,
    work_dir: Annotated[Path, typer.Option(help="Where this party keeps its logs.")] = Path("mpctf-party"),
    server_wait: Annotated[
        float,
        typer.Option(
            help="Seconds to wait for the server to answer, and (60 at most) for it to accept this party's key."
        ),
    ] = 600.0,
) -> None:
    """Start one party (its model worker and SuperNode) and serve the federation until it ends."""
    from mpctf.config import load_config
    from mpctf.errors import ConfigError
    from mpctf.launch.federation import serve_party

    for flag, path in (("--root-cert", root_cert), ("--auth-key", auth_key)):
        if path is not None and not path.is_file():
            raise ConfigError(f"{flag}: file not found: {path}")
    serve_party(
        load_config(config, party=name),
        name,
        work_dir,
        superlink=server_address,
        root_cert=root_cert,
        auth_key=auth_key,
        server_wait_s=server_wait,
        say=lambda line: err.print(line, highlight=False, markup=False),
    )


@app.command()
@friendly
def certs(
    out_dir: Annotated[
        Path,
        typer.Argument(help="Folder to write the CA, server and party credentials into.", show_default=False),
    ],
    server_host: Annotated[
        list[str], typer.Option("--server-host", help="IP or DNS name the parties use to reach the server.")
    ],
    party: Annotated[list[str], typer.Option("--party", help="A party name (repeat for each party).")],
    valid_days: Annotated[
        int, typer.Option(help="Validity of every certificate, in days (1 to 36500).")
    ] = 365,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Replace a CA already in OUT_DIR: every certificate and key it signed stops working.",
        ),
    ] = False,
) -> None:
    """Create a CA, a TLS server certificate and one authentication key pair per party."""
    from mpctf.launch.certs import create_certificates

    made = create_certificates(out_dir, server_host, party, valid_days=valid_days, replace=force)
    out.print(
        f"CA {made.ca_cert}; server certificate for {', '.join(server_host)}; keys for {', '.join(party)}"
    )
    out.print(f"give each party its private key and {made.ca_cert.name}; never copy ca.key off this machine")


@app.command()
@friendly
def report(run_dir: Annotated[Path, typer.Argument(help="A run directory.", show_default=False)]) -> None:
    """Re-render a run's report.md and plots from its metrics."""
    from mpctf.report.render import render_report

    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: not a run directory ({'a file' if run_dir.exists() else 'not found'})")
    if not (run_dir / "metrics.jsonl").is_file():
        raise ConfigError(f"{run_dir}: not a run directory (no metrics.jsonl)")
    out.print(f"wrote {render_report(run_dir, strict=True)}")


@app.command()
@friendly
def tune(
    config: ConfigArg,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Where the trials go (default: output_dir/name-tune-time).")
    ] = None,
) -> None:
    """Federated hyperparameter search over the config's `tune.space` by successive halving, scored by federated
    validation (only metrics leave a party); writes best.yaml and a table of every trial."""
    from mpctf.api import new_run_dir
    from mpctf.config import load_config
    from mpctf.tune.runner import check_tunable, run_search

    cfg = load_config(config)
    check_tunable(cfg)
    preflight_or_fail(cfg)
    target = out_dir or new_run_dir(cfg.model_copy(update={"name": f"{cfg.name}-tune"}))
    if target.exists() and any(target.iterdir()):
        raise ConfigError(f"--out {target}: not empty; give a new folder")
    result = run_search(cfg, target, progress=err.print)
    out.print(result.table.read_text())
    out.print(
        f"best: {result.best.name}; config: {result.best_config}; {result.rounds_run} rounds over all trials "
        f"({result.compute_ratio:.1f}× one run of {cfg.federation.rounds} rounds)"
    )


@app.command()
@friendly
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory.", show_default=False)],
    out_dir: Annotated[
        Path,
        typer.Argument(
            metavar="OUT", help="Folder to write the model into (new or empty).", show_default=False
        ),
    ],
    round_num: Annotated[
        int | None,
        typer.Option(
            "--round",
            help="Export this round's checkpoint (default: the best round by federated validation, else the last).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace OUT's contents if it is not empty.")
    ] = False,
) -> None:
    """Write a standalone Hugging Face model folder (adapter merged into the base, or the full weights, and the
    tokenizer) that transformers loads without MPCTF."""
    from mpctf.export import export_model

    done = export_model(run_dir, out_dir, round_num=round_num, force=force)
    out.print(f"wrote {done.folder} ({done.kind}, round {done.round}: {done.chosen})")
    out.print(f'load it with AutoModelForCausalLM.from_pretrained("{done.folder}")')


def _quiet_libraries() -> None:
    """Keep third-party deprecation notices and progress bars out of normal output: users cannot act on them.

    Set through the environment, so the party and Flower processes started from here inherit it; a setting the
    user made wins."""
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if "PYTHONWARNINGS" not in os.environ:
        os.environ["PYTHONWARNINGS"] = "ignore::FutureWarning,ignore::DeprecationWarning"
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)


def main() -> None:
    """Console-script entry point."""
    _quiet_libraries()
    sys.exit(app())


if __name__ == "__main__":
    main()
