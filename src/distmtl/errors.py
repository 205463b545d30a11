"""One exception type for everything a user can get wrong.

Messages are single lines that name the file, row, column, key or value at fault; the CLI prints
them as ``error: <message>`` and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable


class DistmtlError(ValueError):
    """A user-facing error with a one-line message."""

    def __init__(self, message: str):
        text = " ".join(str(message).split("\n"))
        # re-raised by a DataLoader worker ("Caught DistmtlError in DataLoader worker process 0.
        # Original Traceback ... distmtl.errors.DistmtlError: <message>"): keep only the message
        if "Original Traceback" in text:
            marker = "distmtl.errors.DistmtlError: "
            if marker in text:
                text = text.rsplit(marker, 1)[1].strip()
            elif (match := re.search(r"DistmtlError: (.*)$", text)) is not None:
                text = match.group(1).strip()
        super().__init__(text)


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ' (did you mean: a, b?)' for the closest choices, or '' when none is close."""
    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.5)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""
