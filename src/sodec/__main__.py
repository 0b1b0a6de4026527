"""``python -m sodec``: the same as the ``sodec`` command (where no console script is installed)."""

from .cli import run

run()
