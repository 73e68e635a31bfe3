"""Every naming rule of foldgen in one place: class names, valid and reserved names, key paths."""

from __future__ import annotations

import builtins
import keyword
import re

__all__ = [
    "EXPRESSION_FUNCTIONS",
    "RESERVED_NAMES",
    "class_name",
    "is_snake_case",
    "key_path",
    "reserved_reason",
]

_SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")

#: The functions of the expression language (SPEC.md, "expressions").
EXPRESSION_FUNCTIONS = frozenset(
    {
        "sum", "dot", "quad_form", "sum_squares", "norm2", "norm1", "exp", "log", "sqrt", "sin",
        "cos", "tanh", "sigmoid", "softplus", "square", "abs", "entr", "log_sum_exp", "diag",
        "ones", "eye",
    }
)  # fmt: skip

# Generated code calls builtins freely, so a spec name must not shadow any of them. The names
# that `site` adds are listed explicitly so that the set does not depend on how Python started.
_BUILTINS = frozenset(name for name in vars(builtins) if not name.startswith("_")) | {
    "copyright",
    "credits",
    "exit",
    "help",
    "license",
    "quit",
}
_KEYWORDS = frozenset(keyword.kwlist)
_GENERATED_CODE_NAMES = frozenset({"torch", "math", "self", "ctx"})

#: Names users may not give to dims, parameters or variables (plus anything starting with `_`,
#: which generated code keeps for itself; see `reserved_reason`).
RESERVED_NAMES = _KEYWORDS | _BUILTINS | EXPRESSION_FUNCTIONS | _GENERATED_CODE_NAMES


def reserved_reason(name: str) -> str | None:
    """Why `name` cannot be a dim, parameter or variable name, or None when it can."""
    if name.startswith("_"):
        return "names starting with '_' are reserved for generated code"
    if name in _KEYWORDS:
        return f"'{name}' is a Python keyword"
    if name in EXPRESSION_FUNCTIONS:
        return f"'{name}' is a function of the expression language"
    if name in _GENERATED_CODE_NAMES:
        return f"'{name}' is used by the generated code"
    if name in _BUILTINS:
        return f"'{name}' is a Python builtin that the generated code may use"
    return None


def is_snake_case(s: str) -> bool:
    """True for lowercase words joined by single underscores: `box_qp`, `qp2`."""
    return _SNAKE_CASE.fullmatch(s) is not None


def class_name(snake: str) -> str:
    """The CamelCase class name of a snake_case spec name: `box_qp` -> `BoxQp`."""
    return "".join(word[:1].upper() + word[1:] for word in snake.split("_"))


def key_path(parts: tuple[str | int, ...]) -> str:
    """How a location in the spec is written in messages: `parameters.Q.shape`, `constraints[0]`."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
