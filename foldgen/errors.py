"""The one error type a user sees: every rejected spec becomes a located `SpecError`.

The CLI catches only `SpecError` (exit status 2, nothing written); anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import unicodedata

__all__ = ["ECHO_LIMIT", "SpecError", "one_line", "shown"]

#: The longest spec value a message repeats back (a spec may be a symlink to anything).
ECHO_LIMIT = 80


class SpecError(Exception):
    """A spec that cannot be compiled: one message with file, line, column and key.

    `str(err)` reads like a compiler diagnostic, leaving out the parts that are unknown:
    ``specs/box_qp.yaml:14:5: constraints[0]: unknown name 'y'``.
    Lines and columns are 1-based.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        col: int | None = None,
        key: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.line = line
        self.col = col
        self.key = key

    def __str__(self) -> str:
        where = ":".join(
            str(part) for part in (self.file, self.line, self.col) if part is not None
        )
        return one_line(": ".join(part for part in (where, self.key, self.message) if part))


def one_line(text: str) -> str:
    """``text`` with every character that could break a line or a terminal escaped
    (control characters, line and paragraph separators, lone surrogates), so that one
    diagnostic is always one line, whatever the spec's names and file name hold."""
    out = []
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp", "Cs"):
            out.append(ch.encode("unicode_escape", "backslashreplace").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """A spec value as messages show it: YAML's spelling for null and booleans, repr otherwise,
    cut to ``limit`` characters."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and abs(value) > 10**40:
        text = f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RuleError(Exception):
    """A rule cannot handle the problem: a message and the spec's key path it concerns, but
    no file position (a rule never sees the YAML); `foldgen.build` locates it as a
    SpecError."""

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
