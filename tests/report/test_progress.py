"""The live progress view: what a stopped run leaves on the terminal."""

from __future__ import annotations


def test_an_error_after_live_progress_starts_on_its_own_line() -> None:
    import io

    import pytest
    from rich.console import Console

    from mpctf.report.progress import ProgressView

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=80)
    with pytest.raises(RuntimeError), ProgressView(2, console) as view:
        view({"event": "plan", "party": "alice", "chunk_samples": 4})
        raise RuntimeError("boom")
    console.print("error: boom")
    lines = buffer.getvalue().splitlines()
    assert any(line.startswith("error: boom") for line in lines)
    assert "MPCTF — stopped" in buffer.getvalue()
