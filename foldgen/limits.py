"""How big a spec may be: the bounds that keep a build's cost predictable on untrusted input.

A spec can come from a pull request, so every stage that could be made to do unbounded work
checks one of these bounds and reports a located `SpecError` naming the limit and how to raise
it (``foldgen build --limit NAME=VALUE``). The defaults are far above any real problem and far
below what would exhaust a CI machine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "Limits", "parse_limit"]


@dataclass(frozen=True)
class Limits:
    """Build bounds; each field is also the NAME of ``--limit NAME=VALUE``."""

    spec_bytes: int = 1_000_000
    """Size of a spec file."""
    yaml_depth: int = 32
    """Nesting of YAML mappings and lists."""
    yaml_nodes: int = 20_000
    """YAML nodes after expanding aliases (an alias bomb expands exponentially)."""
    expression_chars: int = 10_000
    """Length of one expression string."""
    expression_depth: int = 100
    """Nesting of one expression (parentheses, calls, operators)."""
    expression_nodes: int = 50_000
    """Distinct nodes of the derived expressions of one spec (the derivation's size)."""
    dim_size: int = 10**9
    """Largest size (a dim's default or an integer in a shape)."""
    number_digits: int = 100
    """Digits of an integer written in the spec (YAML value or expression constant)."""
    text_chars: int = 10_000
    """Length of a free text value (`doc`)."""
    name_chars: int = 64
    """Length of a name (spec, class, dim, parameter, variable)."""
    build_seconds: float = 60.0
    """Wall-clock time to compile one spec."""

    def raise_hint(self, name: str) -> str:
        """How a message tells the user to lift one limit."""
        return f"raise it with --limit {name}=VALUE (now {getattr(self, name)})"


DEFAULT_LIMITS = Limits()


def parse_limit(text: str, limits: Limits = DEFAULT_LIMITS) -> Limits:
    """``limits`` with one ``NAME=VALUE`` applied; ValueError with the reason otherwise."""
    name, sep, value = text.partition("=")
    fields = {f.name: f for f in dataclasses.fields(Limits)}
    if not sep or name not in fields:
        raise ValueError(f"expected NAME=VALUE with NAME one of {', '.join(fields)}")
    try:
        number: float = float(value)
    except ValueError:
        raise ValueError(f"{name}: expected a number, got {value!r}") from None
    if not 0 < number < float("inf"):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    if fields[name].type in ("int", int):
        if not number.is_integer():
            raise ValueError(f"{name}: expected a whole number, got {value!r}")
        number = int(number)
    return dataclasses.replace(limits, **{name: number})  # type: ignore[arg-type]  # int or float per field, checked above
