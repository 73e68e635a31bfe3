"""The one error type a user sees: every rejected spec becomes a located `SpecError`.

The CLI catches only `SpecError` (exit status 2, nothing written); anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


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
        return ": ".join(part for part in (where, self.key, self.message) if part)
