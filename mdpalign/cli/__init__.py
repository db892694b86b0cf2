"""The ``mdpalign`` command: ``solve``, ``bench``, ``train`` and ``eval``.

All argparse lives in this package, above every layer (``solve/`` and ``bench/`` hold no CLI code):
``cli/solve.py``, ``cli/bench.py``, ``cli/llm.py`` (``train``, ``eval``) each expose
``register(subparsers)``; this module only dispatches, importing each lazily so that
``mdpalign solve`` never pays for ``transformers``. Shared argparse value types are in
``cli/argtypes.py``.

It is also the one place that decides how a failure ends (``python -m mdpalign.cli.bench`` and
``python -m mdpalign.llm_bridge.train`` come through here too):

* a user's mistake — any :class:`mdpalign.errors.MdpalignError` (bad option, bad path, bad
  data), or an ``OSError`` (a file that cannot be read or written, a model that cannot be
  fetched) — is one line on stderr, ``mdpalign <command>: error: <message>``, and exit status 2,
  like argparse's own errors;
* Ctrl-C is ``mdpalign <command>: interrupted`` and exit status 130;
* anything else is a bug and keeps its traceback.

``MDPALIGN_TRACEBACK=1`` in the environment shows the traceback of the first two kinds as well.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from mdpalign.errors import MdpalignError

# sub-command -> "module:function" that registers it (function(subparsers) sets args.func); imported lazily
_COMMANDS = {
    "solve": "mdpalign.cli.solve:register",
    "bench": "mdpalign.cli.bench:register",
    "train": "mdpalign.cli.llm:register",
    "eval": "mdpalign.cli.llm:register_eval",
    "verify": "mdpalign.cli.verify:register",
}

#: exit status of a user error (argparse's) and of an interrupted run (128 + SIGINT)
USER_ERROR = 2
INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdpalign",
        description="Alignment objectives proven on exactly solved MDPs.",
        epilog="A mistake in the options, paths or data ends with one line on stderr and exit status 2 "
               "(MDPALIGN_TRACEBACK=1 shows the traceback).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(_COMMANDS) + "}")
    for target in _COMMANDS.values():
        module, function = target.split(":")
        getattr(importlib.import_module(module), function)(sub)
    return parser


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def _os_error_text(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        target = f"{exc.filename} -> {exc.filename2}" if exc.filename2 is not None else f"{exc.filename}"
        return f"{target}: {exc.strerror}"
    return str(exc) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    prog = f"mdpalign {args.command}"
    show_traceback = os.environ.get("MDPALIGN_TRACEBACK", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except MdpalignError as exc:
        if show_traceback:
            raise
        message = one_line(str(exc)) or type(exc).__name__
    except OSError as exc:
        if show_traceback:
            raise
        message = one_line(_os_error_text(exc))
    except KeyboardInterrupt:
        if show_traceback:
            raise
        print(f"{prog}: interrupted", file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(USER_ERROR)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
