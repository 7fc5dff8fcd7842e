"""Property: whatever a user feeds the front door, the answer is an exit code from the documented table and, on
failure, only ``error:`` lines (one per problem), never a traceback.

Configs are mutated from a valid one (wrong types, missing, unknown or repeated keys, odd strings, YAML 1.1
words, bytes that are not UTF-8, truncation); argument lists get odd values and paths that are files or folders.
Nothing here loads a model: ``validate``, ``report`` on small metrics files and ``certs``.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from mpctf.cli import app
from mpctf.errors import EXIT_CODES
from support import tiny_config_dict

runner = CliRunner()
FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WORK = Path(tempfile.mkdtemp(prefix="mpctf-fuzz-"))
atexit.register(shutil.rmtree, WORK, ignore_errors=True)
(WORK / "a-file").write_text("x")
(WORK / "a-folder").mkdir(exist_ok=True)

odd_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            "",
            " ",
            "yes",
            "no",
            "on",
            "off",
            "y",
            "N",
            "~",
            "null",
            "[x]",
            "[/]",
            ":smile:",
            "a\u2028b",
            "\u0085",
            "-1",
            "1e400",
            ".nan",
            "0x10",
            "{text}",
            "../x",
            "a" * 300,
            "\t",
            "%",
            "*a",
            "&a",
            "!!python/name:os",
        ]
    ),
)
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True), odd_text
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=6,
)
paths = st.sampled_from(
    [
        str(WORK / "a-file"),
        str(WORK / "a-folder"),
        str(WORK / "missing" / "x"),
        str(WORK / "a-file" / "under"),
        "",
        ".",
        "/",
        "/proc/mpctf-x",
        "a b[c]",
    ]
)


def _keys(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _keys(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _keys(value, (*prefix, i))
    return found


def _mutate(cfg: dict[str, Any], data: st.DataObject) -> dict[str, Any]:
    for _ in range(data.draw(st.integers(1, 3))):
        key = data.draw(st.sampled_from(_keys(cfg)))
        *parent_path, last = key
        parent: Any = cfg
        for part in parent_path:
            parent = parent[part]
        action = data.draw(st.sampled_from(["replace", "delete", "add", "path"]))
        if action == "delete":
            del parent[last]
        elif action == "add" and isinstance(parent, dict):
            parent[data.draw(odd_text)] = data.draw(values)
        elif action == "path":
            parent[last] = data.draw(paths)
        else:
            parent[last] = data.draw(values)
    return cfg


def _text_mutation(text: str, data: st.DataObject) -> bytes:
    lines = text.split("\n")
    action = data.draw(
        st.sampled_from(["none", "duplicate", "yaml11", "bytes", "truncate", "indent", "alias"])
    )
    i = data.draw(st.integers(0, max(len(lines) - 1, 0)))
    if action == "duplicate":
        lines.insert(i, lines[i])
    elif action == "yaml11":
        word = data.draw(st.sampled_from(["yes", "no", "on", "off", "y", "n", "Yes", "OFF"]))
        lines[i] = (lines[i].split(":")[0] + f": {word}") if ":" in lines[i] else f"{word}: 1"
    elif action == "alias":
        lines[i] = data.draw(
            st.sampled_from(["x: &a [*a]", "x: &a {k: *a}", "x: *undefined", "x: &a 1", "<<: 1"])
        )
    elif action == "indent":
        lines[i] = "   " + lines[i]
    encoded = "\n".join(lines).encode()
    if action == "bytes":
        at = data.draw(st.integers(0, len(encoded)))
        return encoded[:at] + data.draw(st.binary(min_size=1, max_size=4)) + encoded[at:]
    if action == "truncate":
        return encoded[: data.draw(st.integers(0, len(encoded)))]
    return encoded


def _check(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code in EXIT_CODES and result.exit_code != 1, (args, result.output, result.exception)
    assert "Traceback" not in result.output, (args, result.output)
    if result.exit_code != 0:
        lines = [line for line in result.output.split("\n") if line.strip()]
        assert lines and all(line.startswith("error: ") for line in lines), (args, result.output)


@FUZZ
@given(data=st.data())
def test_validate_answers_a_mutated_config_with_a_documented_code(data: st.DataObject) -> None:
    cfg = _mutate(tiny_config_dict(WORK), data)
    path = WORK / "c.yaml"
    path.write_bytes(_text_mutation(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), data))
    _check(["validate", str(path)])


@FUZZ
@given(
    command=st.sampled_from(["validate", "report", "launch", "plan"]),
    target=paths,
    extra=st.lists(
        st.sampled_from(["--json", "--resume", "--run-dir", "--bogus", "-x", "--", "--help"]), max_size=2
    ),
)
def test_path_arguments_that_are_files_folders_or_missing(
    command: str, target: str, extra: list[str]
) -> None:
    _check([command, *extra, target])


@FUZZ
@given(metrics=st.binary(max_size=80) | st.text(max_size=80).map(str.encode))
def test_report_on_an_arbitrary_metrics_file(metrics: bytes) -> None:
    run = WORK / "run"
    run.mkdir(exist_ok=True)
    (run / "metrics.jsonl").write_bytes(metrics)
    _check(["report", str(run)])


@settings(max_examples=40, deadline=None)
@given(
    # never "." or "/": a valid draw would write a CA into the working or the root folder
    out=paths.filter(lambda p: p not in (".", "/"))
    | odd_text.map(lambda s: str(WORK / "certs" / s.replace("\x00", "")) if s else ""),
    host=odd_text,
    party=odd_text,
    days=st.sampled_from(["-5", "0", "1", "x", "99999999999999999999", "36501"]),
    force=st.booleans(),
)
def test_certs_with_odd_arguments(out: str, host: str, party: str, days: str, force: bool) -> None:
    args = ["certs", out, "--server-host", host, "--party", party, "--valid-days", days]
    _check([*args, "--force"] if force else args)
