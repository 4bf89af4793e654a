"""Progress bars: redrawn on a terminal, whole lines at a slow pace on a log file or pipe."""

import io

from prumux_deploy.progress import LOG_INTERVAL_S, progress_bar


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_whole_lines_not_thousands_of_redraws():
    log = io.StringIO()
    bar = progress_bar(total=5000, desc="finetune", unit="step", stream=log)
    for _ in range(5000):
        bar.set_postfix({"loss": "0.5"}, refresh=False)
        bar.update(1)
    bar.close()
    text = log.getvalue()
    lines = text.splitlines()
    assert "\r" not in text and text.endswith("\n")
    # the first draw and the last (the run takes far less than LOG_INTERVAL_S)
    assert LOG_INTERVAL_S >= 10 and len(lines) == 2, lines
    assert lines[0].startswith("finetune:   0%") and lines[-1].startswith("finetune: 100%")
    assert "5000/5000" in lines[-1] and "loss=0.5" in lines[-1] and len(lines[-1]) <= 100


def test_a_terminal_gets_the_redrawn_bar_and_disable_writes_nothing():
    screen = Terminal()
    bar = progress_bar(range(3), desc="validate", stream=screen)
    assert list(bar) == [0, 1, 2]
    assert screen.getvalue().count("\r") >= 2 and "validate: 100%" in screen.getvalue()
    quiet = io.StringIO()
    assert list(progress_bar(range(3), desc="x", stream=quiet, disable=True)) == [0, 1, 2]
    assert quiet.getvalue() == ""


def test_lines_come_at_most_every_interval_on_a_slow_run(monkeypatch):
    """A step every 7 s for 100 steps (700 s): a line at the start, then one per LOG_INTERVAL_S, and the last. The
    bar keeps miniters at 1 (not tqdm's adaptive miniters), without which tqdm's monitor thread forces a redraw
    every 10 s (its maxinterval) whatever mininterval says."""
    now = [1000.0]
    monkeypatch.setattr("tqdm.std.time", lambda: now[0])
    log = io.StringIO()
    bar = progress_bar(total=100, desc="warmup", stream=log)
    assert bar.miniters == 1 and not bar.dynamic_miniters
    for _ in range(100):
        now[0] += 7.0
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    # printed at 0 s, then at the first step >= 30 s after the last line (35, 70, ...: every 5th step), then closed
    assert len(lines) == 1 + 700 // 35 + 1, lines
    assert lines[1].startswith("warmup:   5%") and lines[-1].startswith("warmup: 100%")
