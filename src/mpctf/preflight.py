"""What ``launch`` checks before anything starts, beyond the config's schema: the model, the data, the rules.

``mpctf validate`` and ``mpctf launch`` both run :func:`preflight` on a loaded config, so a config that validates
does not fail at launch for a reason validate could have seen. Every problem is one line naming its config key or
its file and row; all of them are collected in one pass (a bad model does not hide bad data).
"""

from __future__ import annotations

from pathlib import Path

from mpctf.config import RunConfig
from mpctf.errors import DataError, ModelError

#: Rows of each data source read to check fields and labels (the whole file is read, only these are encoded).
SAMPLE_ROWS = 256
#: Problems reported per data source before the rest are counted.
PER_SOURCE = 5


def preflight(config: RunConfig, *, party: str | None = None) -> list[str]:
    """One line per problem that would stop ``launch``; empty when there is none.

    ``party``: check as that party's host (only its own data must be readable); else as the server's host (the
    parties without a remote ``host`` and the evaluation data)."""
    problems = _model_problems(config)
    tokenizer = None
    if not problems:
        from mpctf.model.loading import load_tokenizer

        try:
            tokenizer = load_tokenizer(config.model.name)
        except ModelError as exc:
            problems.append(f"config key `model.name`: {exc}")
    return problems + _data_problems(config, tokenizer, party)


def _model_problems(config: RunConfig) -> list[str]:
    """The model must resolve offline: built in, a local folder, or already in the Hugging Face cache."""
    from mpctf.model.loading import SMOLLM2, TINY

    name = config.model.name
    if name in (SMOLLM2, TINY) or (Path(name) / "config.json").is_file():
        return []
    if Path(name).exists():
        return [f"config key `model.name`: {name} is not a model folder (no config.json there)"]
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError:  # not a valid hub id either (huggingface_hub's HFValidationError)
        cached = None
    if isinstance(cached, str):
        return []
    return [
        f"config key `model.name`: {name!r} is neither built in ({SMOLLM2}, {TINY}), a local folder, nor in the "
        "local Hugging Face cache (nothing is downloaded)"
    ]


def _data_problems(config: RunConfig, tokenizer: object | None, party: str | None) -> list[str]:
    """Each readable data source: present, not empty, and its first rows encodable by the task."""
    from mpctf.data.federated import FederatedData
    from mpctf.data.tasks import make_task

    data = FederatedData(config)
    here = [p.name for p in config.parties if (p.name == party if party else p.host is None)]
    sources = [(f"party {name!r}", lambda name=name: data.party_rows(name)) for name in here]
    if party is None:
        sources.append(("evaluation data", data.eval_rows))
    task = None
    problems: list[str] = []
    if tokenizer is not None:
        try:
            task = make_task(config, tokenizer)
        except DataError as exc:
            problems.append(str(exc))
    for what, rows_of in sources:
        try:
            rows = rows_of()
        except DataError as exc:
            problems.append(f"{what}: {exc}")
            continue
        if not rows:
            problems.append(f"{what}: no rows")
        elif task is not None:
            problems += _row_problems(task, rows[:SAMPLE_ROWS], what)
    return problems


def _row_problems(task: object, rows: list[dict[str, str]], what: str) -> list[str]:
    encode = getattr(task, "encode", None)
    if encode is None:  # a task that encodes rows only together (e.g. packed causal-LM text)
        try:
            task.encode_all(rows, what)  # type: ignore[attr-defined]
        except DataError as exc:
            return [str(exc)]
        return []
    found: list[str] = []
    bad = 0
    for i, row in enumerate(rows):
        try:
            encode(row, f"{what} row {i + 1}")
        except DataError as exc:
            bad += 1
            if len(found) < PER_SOURCE:
                found.append(str(exc))
    if bad > len(found):
        found.append(f"{what}: {bad - len(found)} more of its first {len(rows)} rows have problems")
    return found
