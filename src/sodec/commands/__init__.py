"""Sub-commands that live beside the core ones (evaluate, bench, ...).

Each module here exposes ``add_parser(subparsers, common) -> None``; the parser's handler is set
with ``set_defaults(func=...)`` and returns an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from collections.abc import Callable


def register_all(sub: argparse._SubParsersAction, common: Callable[[argparse.ArgumentParser], None]) -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        mod = importlib.import_module(f"{__name__}.{info.name}")
        add = getattr(mod, "add_parser", None)
        if add is not None:
            add(sub, common)
