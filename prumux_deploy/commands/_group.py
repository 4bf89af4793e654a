"""The click group every command family hangs from: library errors become one line and an exit code."""

from __future__ import annotations

import re
import traceback

import click

from ..errors import PruMuxError

_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def in_cli_terms(message: str, command: click.Command | None) -> str:
    """A library message in the command's terms: each `parameter` that names one of the command's options
    becomes its flag (`max_seq_length` -> --max-seq-length, `fmt` -> --format), an argument its metavar
    (`out` -> OUT); other `names` lose their backticks."""
    names = {}
    for param in getattr(command, "params", []):
        if isinstance(param, click.Option):
            names[param.name] = max(param.opts, key=len)
        elif isinstance(param, click.Argument):
            names[param.name] = param.human_readable_name
    return _PARAMETER.sub(lambda m: names.get(m.group(1), m.group(1)), message)


class CommandGroup(click.Group):
    """Turns PruMuxError (and any unexpected error) from a subcommand into one line on stderr (`error: ...`,
    in the subcommand's own flags) and its exit code; the traceback only with --debug."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except PruMuxError as e:
            _traceback_if_debug(ctx)
            command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
            click.echo(f"error: {in_cli_terms(str(e), command)}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted; no output was written", err=True)
            ctx.exit(130)
        except BrokenPipeError:
            reader_went_away()
        except Exception as e:  # a bug or an environment problem: still one line, the traceback with --debug
            self._unexpected(ctx, e)
        except BaseException as e:  # a Rust library's panic (pyo3's PanicException is no Exception)
            if type(e).__name__ != "PanicException":
                raise
            self._unexpected(ctx, e)

    def _unexpected(self, ctx, e: BaseException):
        """One line for an error no library call named: a resource that ran out (a full disk, memory) in
        words that say so (resources.resource_message), anything else as unexpected; exit 2."""
        from ..resources import resource_message

        _traceback_if_debug(ctx)
        command = self.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
        resumable = any(param.name == "resume" for param in getattr(command, "params", []))
        line = resource_message(e, f"run {ctx.command_path} {ctx.invoked_subcommand or ''}".strip(), resumable)
        if line is None:
            msg = str(e).splitlines()[0] if str(e) else ""
            line = f"unexpected {type(e).__name__}: {msg} (rerun with --debug for the traceback)"
        else:
            line = in_cli_terms(line, command)
        click.echo(f"error: {line}", err=True)
        ctx.exit(2)


def reader_went_away():
    """The reader of stdout closed it early (`prumux-deploy predict ... | head -1`): end quietly with the
    status a process killed by SIGPIPE has (128 + 13), as other Unix tools do. Python would otherwise print
    an error when it flushes stdout again at exit, so stdout is pointed at /dev/null first."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (a test runner's buffer)
        pass
    sys.exit(141)


def _traceback_if_debug(ctx):
    obj = ctx.find_root().obj
    if obj and obj.get("debug"):
        traceback.print_exc()
