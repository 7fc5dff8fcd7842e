"""The report's plots: rounds are whole numbers on the x axis, however few there are."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt

from mpctf.report.render import render_report


def test_round_ticks_are_whole_numbers(tmp_path: Path, monkeypatch) -> None:
    records = [{"event": "run_start", "name": "t"}] + [
        {"event": "round", "round": r, "accuracy": 0.5 + r / 10, "eval_loss": 1.0 - r / 10} for r in (0, 1, 2)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig)))
    render_report(tmp_path)
    assert figures and (tmp_path / "accuracy.png").is_file()
    for fig in figures:
        ax = fig.axes[0]
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
