"""The `prumux-deploy` command line: the one command group, its error handling, and the list of commands.

Each family of commands lives in prumux_deploy/commands/ (one module each) and is added here by name;
importing a command module registers nothing.
"""

from __future__ import annotations

import signal
import sys


def _off_a_closed_terminal() -> None:
    """Point stdout and stderr at /dev/null when they are a terminal that was closed (after SIGHUP every write to
    it fails with EIO, probed by an empty write), so that the interruption line and Python's exit do not turn a
    clean stop into an OSError and exit status 1."""
    import errno
    import os

    for fd in (1, 2):
        try:
            os.write(fd, b"")
        except OSError as e:
            if e.errno == errno.EIO:
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, fd)
                os.close(devnull)


def _interrupted_quietly(signum, frame):
    """Ctrl-C while the command line starts (torch, transformers, onnxruntime load for seconds) or while the
    interpreter shuts down: the one line every interruption gets, exit 130, no traceback."""
    _off_a_closed_terminal()
    sys.stderr.write("interrupted; no output was written\n")
    sys.exit(130)


def _on_ctrl_c(handler, signals=(signal.SIGINT,)) -> None:
    import threading

    if threading.current_thread() is threading.main_thread():  # (signal handlers live in the main thread)
        for signum in signals:
            signal.signal(signum, handler)


def _on_stop_signals(handler) -> None:
    _on_ctrl_c(handler, (signal.SIGINT, *_STOP_SIGNALS))


_on_ctrl_c(_interrupted_quietly)


def _fit_the_address_limit() -> None:
    """Before numpy, torch and the runtimes load (the imports below): under a `ulimit -v` too low to load them,
    one line and exit 2 instead of a crash or a hang in OpenBLAS's start-up; under a tight one, thread pools
    sized to it (resources.prepare_for_address_limit)."""
    from .errors import PruMuxError
    from .resources import prepare_for_address_limit

    try:
        prepare_for_address_limit()
    except PruMuxError as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(e.exit_code)


_fit_the_address_limit()

import click  # noqa: E402 - after the handler: a Ctrl-C while these load is the one line above

from .commands import auto, bench, export, model, predict, train, validate  # noqa: E402
from .commands._group import CommandGroup, reader_went_away  # noqa: E402


class PruMuxGroup(CommandGroup):
    """The top-level group: besides the subcommands' errors (CommandGroup), usage errors (a bad or missing
    option, a value out of range) are one line too, with exit 2, and Ctrl-C, `kill` (SIGTERM) or a closed terminal
    (SIGHUP) exits 130."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _on_ctrl_c(signal.default_int_handler)  # from here Ctrl-C is a KeyboardInterrupt: click's Abort, below
        _on_ctrl_c(_interrupt, _STOP_SIGNALS)  # and so are `kill` and a closed terminal: no half-written output
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            if not standalone_mode:
                raise
            where = f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else ""
            click.echo(f"error: {' '.join(e.format_message().split()).rstrip('.')}{where}", err=True)
            sys.exit(e.exit_code)
        except click.ClickException as e:
            if not standalone_mode:
                raise
            e.show()
            sys.exit(e.exit_code)
        except click.exceptions.Abort:
            if not standalone_mode:
                raise
            click.echo("interrupted; no output was written", err=True)
            sys.exit(130)
        if standalone_mode:  # the interpreter's shutdown (atexit, threads) is quiet too, in true words
            _on_stop_signals(_interrupted_after_the_command if rv in (None, 0) else _interrupted_quietly)
            try:
                sys.stdout.flush()  # a reader that closed the pipe shows here, not in Python's exit handler
            except BrokenPipeError:
                reader_went_away()
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


@click.group(cls=PruMuxGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.version_option(package_name="prumux-deploy")
@click.pass_context
def main(ctx, debug):
    """Turn PruMUX models (multiplexed + structurally pruned BERT classifiers) into dense, validated engines.

    \b
    Typical flow:
      prumux-deploy init model/ --base minilm --instances 2 --task sst2
      prumux-deploy export model/ engine/
      prumux-deploy validate engine/ --checkpoint model/ --task sst2 --data ../shared/data/glue/SST-2
      prumux-deploy predict engine/ "a gorgeous, witty film"
    """
    ctx.obj = {"debug": debug}


# SIGTERM (`kill`, a preempted job) and SIGHUP (the terminal closed: ssh dropped, window shut) stop a command the
# way Ctrl-C does: the temporary directory is removed, OUT is absent or whole, exit 130 for all three
_STOP_SIGNALS = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]


def _interrupt(signum, frame):
    _off_a_closed_terminal()
    raise KeyboardInterrupt


def _interrupted_after_the_command(signum, frame):
    """Ctrl-C, SIGTERM or SIGHUP while the interpreter exits after a command that succeeded: its output is
    written, so the usual line ("no output was written") would be false."""
    _off_a_closed_terminal()
    sys.stderr.write("interrupted while exiting; the command had finished\n")
    sys.exit(130)


for command in (model.init, model.import_cmd, model.compact, model.inspect, export.export, export.triton,
                validate.validate, predict.predict, bench.bench, auto.auto, train.train):
    main.add_command(command)

if __name__ == "__main__":
    main()
