"""``python -m sodec``: the same as the ``sodec`` command (where no console script is installed)."""

import sys

from .cli import main

sys.exit(main())
