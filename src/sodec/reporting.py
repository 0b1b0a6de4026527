"""Generated README sections: scripts write their tables between marker lines, never by hand.

A section is the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``.
"""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(path: str | Path, name: str, body: str) -> bool:
    """Replace section ``name`` of the file at ``path``; False (nothing written) if it has none."""
    path = Path(path)
    text = path.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        return False
    path.write_text(pattern.sub(lambda _: f"{start}\n{body.strip()}\n{end}", text, count=1))
    return True
