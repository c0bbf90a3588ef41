"""The live progress line: shown from the first second (before any input is done), counts
done/total and passes, tok/s and ETA; the same line in the CLI and in Prefect task logs."""

import threading
import time

from conftest import SIX_TASKS
from typer.testing import CliRunner

from cegraph.progress import Progress, live


def test_the_line_counts_passes_rate_and_eta():
    meter = [500]  # a meter shared with an earlier batch: its 500 tokens are not this one's
    p = Progress(4, "math", tokens=lambda: meter[0], started=time.monotonic() - 10)
    meter[0] += 100
    assert p.line().startswith("math: 0/4 done, 0 passed, 10.0 tok/s") and "ETA ?" in p.line()
    p.advance(True)
    p.advance(False)
    assert "2/4 done, 1 passed" in p.line() and p.line().endswith("ETA 10s")
    p.advance(None), p.advance(True)
    assert p.line().endswith("ETA done")


def test_live_shows_a_line_at_once_and_while_nothing_finishes():
    lines: list[str] = []
    release = threading.Event()
    with live(Progress(3, "x"), lines.append, every_s=0.05):
        assert lines == ["x: 0/3 done, 0 passed, 0.0 tok/s, 0s elapsed, ETA ?"]
        release.wait(0.3)  # a model still loading: no input done yet
        ticks = len(lines)
    assert ticks >= 3  # refreshed while nothing finished
    assert len(lines) == ticks + 1  # and once more at the end


def test_the_prefect_task_logs_progress_lines(tmp_path, scripted, monkeypatch):
    import cegraph.tasks.execution as execution
    from cegraph.seeds import seed

    logged: list[str] = []

    class Log:
        def info(self, msg: str, *args: object) -> None:
            logged.append(msg % args)

    monkeypatch.setattr(execution, "get_run_logger", lambda: Log())
    scripted.reply = lambda m: "\\boxed{1}"
    execution.run_workflow.fn(str(tmp_path), seed("math"), SIX_TASKS[:3], model="scripted/m")
    assert logged[0].startswith("math-solver: 0/3 done, 0 passed")  # before the first run ends
    assert any(line.startswith("t0: pass | math-solver: ") and "1 passed" in line
               for line in logged)
    assert any("3/3 done, 1 passed" in line for line in logged)


def test_cli_run_prints_the_final_progress_line(scripted):
    from cegraph.cli.main import app

    scripted.reply = lambda m: "\\boxed{1}"
    out = CliRunner().invoke(app, ["run", "--n", "3", "--model", "scripted/m"])
    assert out.exit_code == 0, out.output
    assert "3/3 done, " in out.output and "tok/s" in out.output


def test_bench_refine_shows_progress_for_scoring_and_refining(scripted):
    from cegraph.cli.main import app

    scripted.reply = lambda m: "\\boxed{1}"
    out = CliRunner().invoke(app, ["bench", "refine", "--model", "scripted/m", "--dev", "4",
                                   "--test", "2", "--budget", "30", "--methods", "scalar"])
    assert out.exit_code == 0, out.output
    assert out.output.count("2/2 done, 0 passed") == 2  # seed and refined on the test set
