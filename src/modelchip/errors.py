"""One error type for everything a user can get wrong, with near-match suggestions."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ModelchipError(ValueError):
    """Bad input from the user: the message names the problem and, where possible, the fix."""


def near(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Closest spellings of `word` among `choices` (case-insensitive)."""
    lowered = {c.lower(): c for c in choices}
    return [lowered[m] for m in difflib.get_close_matches(word.lower(), list(lowered), n=n, cutoff=0.5)]


def unknown(what: str, word: str, choices: Iterable[str]) -> ModelchipError:
    """Error for an unknown id, listing near matches (or all choices when there are few)."""
    choices = sorted(choices)
    close = near(word, choices)
    known = "known: " + ", ".join(choices[:40]) + (" ..." if len(choices) > 40 else "")
    if not close:
        hint = known
    elif len(choices) <= 12:
        # A near match can be wrong (a plugin's name happens to be close); with few choices show them all.
        hint = "did you mean " + ", ".join(close) + "? " + known
    else:
        hint = "did you mean " + ", ".join(close) + "?"
    return ModelchipError(f"unknown {what} {word!r}; {hint}")
