"""ProcessGroup: logs, death detection, and teardown of whole process trees on success, error and signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from mpctf.errors import Interrupted, LaunchError
from mpctf.launch.processes import ProcessGroup, signals_raise, tail

# A shell that starts a grandchild: only stopping the whole process group stops both.
TREE = ["sh", "-c", "sleep 300 & echo started; wait"]
# A shell that ignores SIGTERM, like a process stuck in teardown.
STUBBORN = ["sh", "-c", "trap '' TERM; echo stubborn; while true; do sleep 0.1; done"]


def alive(pgids: list[int]) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) in pgids and proc.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def wait_for_line(path: Path, text: str) -> None:
    deadline = time.monotonic() + 10
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} never appeared in {path}"
        time.sleep(0.02)


def test_stop_all_ends_every_process_tree_and_logs_output(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path / "logs") as group:
        a = group.start("a", TREE)
        b = group.start("b", TREE)
        wait_for_line(tmp_path / "logs" / "a.log", "started")
        wait_for_line(tmp_path / "logs" / "b.log", "started")
        pgids = [a.pid, b.pid]
        assert len(alive(pgids)) == 4  # two shells, two sleeps
    assert alive(pgids) == []
    assert (tmp_path / "logs" / "a.log").read_text().strip() == "started"


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path, grace_s=0.5)
    child = group.start("stubborn", STUBBORN)
    wait_for_line(child.log_path, "stubborn")
    started = time.monotonic()
    group.stop_all()
    assert 0.5 <= time.monotonic() - started < 5
    assert child.popen.returncode == -signal.SIGKILL
    assert alive([child.pid]) == []
    group.stop_all()  # a second call is harmless


def test_the_group_is_stopped_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), ProcessGroup(tmp_path) as group:
        child = group.start("tree", TREE)
        raise RuntimeError("boom")
    assert alive([child.pid]) == []


def test_check_names_the_dead_process_and_quotes_its_log(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        group.start("ok", TREE)
        group.start("bad", ["sh", "-c", "echo one; echo two; echo three; echo four; exit 7"])
        group.check({"ok"})
        deadline = time.monotonic() + 10
        while "bad" not in group.exited():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(LaunchError) as caught:
            group.check()
    assert str(caught.value) == f"bad exited with code 7; log {tmp_path / 'bad.log'}: two | three | four"
    assert group.exited()["bad"] == 7


def test_restart_reuses_the_command_and_log_and_still_stops_what_the_first_run_left(tmp_path: Path) -> None:
    # The first run exits but leaves a grandchild behind in its process group, as a dying SuperNode may;
    # the second run (it finds the marker) stays up.
    script = "sleep 300 & echo run; [ -e marker ] && wait; touch marker; exit 3"
    with ProcessGroup(tmp_path) as group:
        first = group.start("node", ["sh", "-c", script], cwd=tmp_path)
        assert first.popen.wait() == 3
        assert len(alive([first.pid])) == 1
        second = group.restart("node")
        wait_for_line(first.log_path, "run\nrun")
        with pytest.raises(ValueError, match="still running"):
            group.restart("node")
        assert group.exited() == {}
    assert alive([first.pid, second.pid]) == []


def test_a_command_that_cannot_start_is_a_launch_error(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group, pytest.raises(LaunchError, match="could not start nope"):
        group.start("nope", ["/definitely/not/here"])


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    with ProcessGroup(tmp_path) as group:
        group.start("x", ["true"])
        with pytest.raises(ValueError, match="already started"):
            group.start("x", ["true"])


def test_tail_reads_the_last_non_empty_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("a\n\nb\nc\n\n")
    assert tail(log, 2) == "b | c"
    assert tail(tmp_path / "missing.log") == ""


def test_signals_raise_turns_sigterm_into_interrupted() -> None:
    with pytest.raises(Interrupted, match="SIGTERM"), signals_raise():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


LAUNCHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mpctf.launch.processes import ProcessGroup, signals_raise
    with signals_raise(), ProcessGroup(Path(sys.argv[1]), grace_s=1) as group:
        for name in ("a", "b"):
            group.start(name, {tree!r})
        print(" ".join(str(c.pid) for c in group.children()), flush=True)
        time.sleep(300)
""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signalled_launcher_leaves_no_process_behind(tmp_path: Path, sig: signal.Signals) -> None:
    src = str(Path(__file__).resolve().parents[2] / "src")
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER.format(tree=TREE), str(tmp_path)],
        env={**os.environ, "PYTHONPATH": src},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout is not None
    pgids = [int(pid) for pid in launcher.stdout.readline().split()]
    for name in ("a", "b"):
        wait_for_line(tmp_path / f"{name}.log", "started")
    assert len(alive(pgids)) == 4
    launcher.send_signal(sig)
    _, stderr = launcher.communicate(timeout=20)
    assert launcher.returncode != 0
    assert f"Interrupted: stopped by {sig.name}" in stderr
    assert alive(pgids) == []
