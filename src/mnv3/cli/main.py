"""``mnv3``: the command line. Each subcommand is one thin module in this package.

A subcommand module defines ``add_parser(subparsers)`` (its docstring is its --help) and
``run(args) -> int``. User errors (``Mnv3Error``) print one line and exit with their code;
anything else is our bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import sys
import warnings

from mnv3 import __version__
from mnv3.errors import Interrupted, Mnv3Error, Mnv3Warning

# The pipeline, in order.
SUBCOMMANDS = ("export", "build", "infer", "eval", "bench", "run", "tune", "compare", "verify",
               "build-cpp", "serve", "merge")

EPILOG = """\
stages:  export -> build -> infer / eval -> bench;  'run' does them all.
tuning:  tune (the fastest engine, precision and settings here, within an accuracy budget)
checks:  compare (two builds, layer by layer), verify (a model's accuracy on this CPU)
serving: serve (an HTTP service, local or on Ray Serve); bench --serve URL (its load test)
scale:   infer --engine ray (a Ray cluster); infer --shard K/N on N drivers, then merge
example: mnv3 run                      # the whole pipeline on the bundled demo images
         mnv3 <command> --help         # each command's flags, with an example

exit codes: 0 ok, 2 usage, 3 data, 4 checkpoint, 5 export, 6 build, 7 model,
            8 backend unavailable, 9 below accuracy budget (verify),
            130 interrupted; 1 means a bug (please report the traceback).
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnv3",
        description="Deploy a trained PyTorch MobileNetV3 for fast inference, and prove its "
        "accuracy and speed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mnv3 {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name in SUBCOMMANDS:
        module_name = f"mnv3.cli.{name.replace('-', '_')}_cmd"
        if importlib.util.find_spec(module_name) is None:
            continue  # stage not implemented yet
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse would print the top-level usage; the command's own is the useful one
        _command_parser(parser, getattr(args, "command", None)).error(
            f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with _warnings_as_lines(args.command):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        err = Interrupted("interrupted; nothing partial was left behind")
        print(f"mnv3: error: {err}", file=sys.stderr)
        return err.exit_code
    except Mnv3Error as err:
        print(f"mnv3 {args.command}: error: {err}", file=sys.stderr)
        return err.exit_code


def _command_parser(parser: argparse.ArgumentParser, command: str | None):
    """The subcommand's parser (whose usage lists its flags), or ``parser`` itself."""
    for action in parser._actions:  # argparse keeps subparsers in a private action type
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return action.choices[command]
    return parser


@contextlib.contextmanager
def _warnings_as_lines(command: str):
    """Our warnings (``Mnv3Warning``) as one ``mnv3 CMD: warning:`` line each on stderr, not
    Python's file:line form; other libraries' warnings are left as they are."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, Mnv3Warning):
            print(f"mnv3 {command}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = shown


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
