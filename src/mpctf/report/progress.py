"""Live progress in the terminal, fed by metrics records (in-process listener or by tailing metrics.jsonl)."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from mpctf.report.metrics import Record, score_cell


class ProgressView:
    """A rich table of parties for the current round plus a line per finished round."""

    def __init__(self, total_rounds: int, console: Console | None = None) -> None:
        self.total = total_rounds
        self.console = console or Console(stderr=True)
        self.parties: dict[str, dict[str, Any]] = {}
        self.rounds: list[Record] = []
        self.status = "starting"
        self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)

    def __enter__(self) -> ProgressView:
        self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            self.status = "stopped"
            self.live.update(self._render())
        self.live.__exit__(*exc)  # type: ignore[arg-type]
        if exc[0] is not None:  # the error that follows starts on a line of its own, below the table
            self.console.line()

    def set_status(self, text: str) -> None:
        self.status = text
        self.live.update(self._render())

    def __call__(self, record: Record) -> None:
        event = record["event"]
        if event == "plan":
            self.parties[record["party"]] = {"status": "ready", "chunk": record["chunk_samples"]}
            self.status = "planned"
        elif event == "party_round":
            self.parties.setdefault(record["party"], {}).update(
                status=record["status"],
                loss=record.get("loss"),
                round=record["round"],
                up=record.get("bytes_up", 0),
                seconds=record.get("seconds", 0.0),
            )
            self.status = f"round {record['round']}/{self.total}: {record['party']} {record['status']}"
        elif event == "round":
            self.rounds.append(record)
            self.status = f"round {record['round']}/{self.total} done"
        elif event == "run_end":
            self.status = "finished"
        self.live.update(self._render())

    def _render(self) -> Group:
        table = Table(title=f"MPCTF — {self.status}", expand=False)
        for col in ("party", "round", "status", "loss", "up kB", "round trip s"):
            table.add_column(col)
        for name, p in sorted(self.parties.items()):
            loss = p.get("loss")
            table.add_row(
                name,
                str(p.get("round", "—")),
                p.get("status", "—"),
                f"{loss:.4f}" if isinstance(loss, float) else "—",
                f"{p.get('up', 0) / 1e3:.1f}",
                f"{p.get('seconds', 0.0):.1f}",
            )
        lines = [
            Text(
                f"round {r['round']}: accuracy {score_cell(r, 'accuracy')}, eval loss {score_cell(r, 'eval_loss')}, "
                + (f"val accuracy {score_cell(r, 'val_accuracy')}, " if "val_accuracy" in r else "")
                + f"up {r.get('cumulative_bytes_up', 0) / 1e6:.2f} MB"
            )
            for r in self.rounds
        ]
        return Group(table, *lines)
