"""The `prumux-deploy` command line: the one command group, its error handling, and the list of commands.

Each family of commands lives in prumux_deploy/commands/ (one module each) and is added here by name;
importing a command module registers nothing.
"""

from __future__ import annotations

import signal
import sys


def _interrupted_quietly(signum, frame):
    """Ctrl-C while the command line starts (torch, transformers, onnxruntime load for seconds) or while the
    interpreter shuts down: the one line every interruption gets, exit 130, no traceback."""
    sys.stderr.write("interrupted; no output was written\n")
    sys.exit(130)


def _on_ctrl_c(handler) -> None:
    import threading

    if threading.current_thread() is threading.main_thread():  # (signal handlers live in the main thread)
        signal.signal(signal.SIGINT, handler)


_on_ctrl_c(_interrupted_quietly)

import click  # noqa: E402 - after the handler: a Ctrl-C while these load is the one line above

from .commands import auto, bench, export, model, predict, train, validate  # noqa: E402
from .commands._group import CommandGroup, reader_went_away  # noqa: E402


class PruMuxGroup(CommandGroup):
    """The top-level group: besides the subcommands' errors (CommandGroup), usage errors (a bad or missing
    option, a value out of range) are one line too, with exit 2, and Ctrl-C or `kill` exits 130."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        _on_ctrl_c(signal.default_int_handler)  # from here Ctrl-C is a KeyboardInterrupt: click's Abort, below
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
        if standalone_mode:
            _on_ctrl_c(_interrupted_quietly)  # the interpreter's shutdown (atexit, threads) is quiet too
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
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` cleans up like Ctrl-C: no half-written output


def _interrupt(signum, frame):
    raise KeyboardInterrupt


for command in (model.init, model.import_cmd, model.compact, model.inspect, export.export, export.triton,
                validate.validate, predict.predict, bench.bench, auto.auto, train.train):
    main.add_command(command)

if __name__ == "__main__":
    main()
