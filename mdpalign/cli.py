"""The ``mdpalign`` command: ``solve``, ``bench`` and ``train``.

Each sub-command lives beside the code it drives and exposes ``register(subparsers)``; this
module only dispatches, importing each lazily so that ``mdpalign solve`` never pays for
``transformers``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# sub-command -> module exposing register(subparsers) and setting args.func
_COMMANDS = {
    "solve": "mdpalign.solve.cli",
    "bench": "mdpalign.bench.cli",
    "train": "mdpalign.llm_bridge.cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mdpalign",
        description="Alignment objectives proven on exactly solved MDPs.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(_COMMANDS) + "}")
    for name, module in _COMMANDS.items():
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
