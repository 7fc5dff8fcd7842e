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


def test_a_round_line_shows_the_federated_validation_when_the_run_has_it() -> None:
    import io

    from rich.console import Console

    from mpctf.report.progress import ProgressView

    buffer = io.StringIO()
    with ProgressView(2, Console(file=buffer, width=120)) as view:
        view({"event": "round", "round": 1, "accuracy": 0.75, "eval_loss": 0.5, "val_accuracy": 0.8})
        view({"event": "round", "round": 2, "accuracy": 0.7, "eval_loss": 0.6})
    text = buffer.getvalue()
    assert "round 1: accuracy 0.7500, eval loss 0.5000, val accuracy 0.8000, up 0.00 MB" in text
    assert "round 2: accuracy 0.7000, eval loss 0.6000, up 0.00 MB" in text
