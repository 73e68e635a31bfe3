"""The one way spec text reaches a generated module: escaping for the exact place it goes.

A spec is untrusted, and so is its file name. The emitter passes free text through
`docstring` or `comment`, names through `identifier`, numbers through `number` and strings
through `string_literal`; nothing else of the spec is printed (everything else in a module is
code that foldgen printed from those). tests/test_injection.py proves the promise on the
parsed output of hostile specs: their text appears only inside string constants and comments.
"""

from __future__ import annotations

import keyword
import math
import re
import unicodedata

from foldgen.errors import one_line

__all__ = ["comment", "docstring", "identifier", "number", "string_literal"]

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def identifier(name: str) -> str:
    """An ASCII Python identifier that is not a keyword; ValueError otherwise (the spec's
    validation rejects such names first, with a located message)."""
    if not _IDENTIFIER.fullmatch(name) or keyword.iskeyword(name):
        raise ValueError(f"not an identifier: {name!r}")
    return name


def number(value: float) -> str:
    """A float literal that reads well and round-trips (``0.5``, ``2.0``, ``1e-08``); finite
    only, since ``inf`` would print as a name."""
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    if value == int(value) and abs(value) < 1e15:
        return f"{value:.1f}"
    return repr(float(value))


def docstring(text: str) -> str:
    """``text`` as the body of a non-raw triple-quoted string: the string ends where the
    template ends it, whatever ``text`` holds, and reads back as ``text``.

    Backslashes are doubled (no ``\\N{...}`` or ``\\x`` escapes of the spec's own); a quote
    that would start or end a run of three is escaped; characters that are not printable on a
    line of source (controls other than newline, line separators) become escapes, and a lone
    surrogate becomes the text of its escape.
    """
    out = []
    for i, ch in enumerate(text):
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"' and (i + 1 == len(text) or text[i + 1] == '"'):
            out.append('\\"')
        elif unicodedata.category(ch) == "Cs":
            # A lone surrogate is not text (a class docstring must encode as UTF-8): it is
            # kept as the visible characters of its escape.
            out.append("\\\\" + ch.encode("unicode_escape").decode("ascii")[1:])
        elif ch != "\n" and unicodedata.category(ch) in ("Cc", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


def comment(text: str) -> str:
    """``text`` for the rest of one ``#`` comment line: nothing in it can end the line."""
    return one_line(text)


def string_literal(text: str) -> str:
    """A double-quoted Python string literal whose value is ``text``."""
    body = (
        text.replace("\\", "\\\\")
        .replace('"', '\\"')
        .encode("ascii", "backslashreplace")
        .decode("ascii")
    )
    body = "".join(
        ch.encode("unicode_escape").decode("ascii") if unicodedata.category(ch) == "Cc" else ch
        for ch in body
    )
    return f'"{body}"'


def literal(value: object) -> str:
    """A deterministic Python literal for tuples/dicts of names, numbers and None."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{literal(k)}: {literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, tuple):
        inner = ", ".join(literal(v) for v in value)
        return f"({inner},)" if len(value) == 1 else f"({inner})"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, str):
        return string_literal(value)
    return repr(value)
