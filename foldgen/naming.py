"""Every naming rule of foldgen in one place: class names, valid and reserved names, key paths."""

from __future__ import annotations

import builtins
import keyword
import re

__all__ = [
    "EXPRESSION_FUNCTIONS",
    "LAYER_ATTRIBUTES",
    "LAYER_SETTINGS",
    "MODULE_GLOBALS",
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

#: The public top-level names of every generated module (its imports, tables and classes).
MODULE_GLOBALS = frozenset(
    {
        "dataclasses", "math", "sys", "time", "torch", "types", "warnings", "PARAMETERS",
        "GRAD_PARAMETERS", "DEFAULTS", "DEFAULT_DIMS", "VARIABLE", "VARIABLES", "PROBLEM", "SolveInfo",
        "BackwardInfo", "ConvergenceWarning", "ConvergenceError",
    }
)  # fmt: skip

#: The keyword settings of a layer's constructor, under any rule: a parameter of that name
#: would be a duplicate argument.
LAYER_SETTINGS = frozenset(
    {
        "max_iter", "tol", "step_size", "rho", "adapt_rho", "step", "backward_method",
        "backward_max_iter", "backward_tol", "on_nonconvergence", "fold_unconverged", "backward_fallback", "verbose",
        "compile",
    }
)  # fmt: skip

#: What a layer object already has: its own attributes and torch.nn.Module's public ones
#: (a bound input becomes an attribute of the same name). tests/test_names.py keeps this in
#: step with the torch installed and with the generated modules.
LAYER_ATTRIBUTES = frozenset(
    {
        "bound", "info", "backward_info", "multipliers", "unrolled", "update_map", "forward_tol",
        "adjoint_tol", "compile_body",
        "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init",
        "children", "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr",
        "float", "forward", "get_buffer", "get_extra_state", "get_parameter", "get_submodule",
        "half", "ipu", "load_state_dict", "modules", "mtia", "named_buffers", "named_children",
        "named_modules", "named_parameters", "parameters", "register_backward_hook",
        "register_buffer", "register_forward_hook", "register_forward_pre_hook",
        "register_full_backward_hook", "register_full_backward_pre_hook",
        "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
        "register_module", "register_parameter", "register_state_dict_post_hook",
        "register_state_dict_pre_hook", "requires_grad_", "set_extra_state", "set_submodule",
        "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "xpu",
        "zero_grad",
    }
)  # fmt: skip

#: Names users may not give to dims, parameters or variables (plus anything starting with `_`,
#: which generated code keeps for itself, and `<variable>_init`; see `reserved_reason`).
RESERVED_NAMES = (
    _KEYWORDS
    | _BUILTINS
    | EXPRESSION_FUNCTIONS
    | _GENERATED_CODE_NAMES
    | MODULE_GLOBALS
    | LAYER_SETTINGS
    | LAYER_ATTRIBUTES
)


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
    if name in MODULE_GLOBALS:
        return f"'{name}' is a name of the generated module ({_listed(MODULE_GLOBALS)})"
    if name in LAYER_SETTINGS:
        return f"'{name}' is a setting of the layer's constructor ({_listed(LAYER_SETTINGS)})"
    if name in LAYER_ATTRIBUTES:
        return (
            f"'{name}' is an attribute of the layer or of torch.nn.Module "
            "(e.g. bound, info, backward_info, forward, training, parameters, to)"
        )
    if name in _BUILTINS:
        return f"'{name}' is a Python builtin that the generated code may use"
    return None


def _listed(names: frozenset[str]) -> str:
    return ", ".join(sorted(names))


def is_snake_case(s: str) -> bool:
    """True for lowercase words joined by single underscores: `box_qp`, `qp2`."""
    return _SNAKE_CASE.fullmatch(s) is not None


def class_name(snake: str) -> str:
    """The CamelCase class name of a snake_case spec name: `box_qp` -> `BoxQp`."""
    return "".join(word[:1].upper() + word[1:] for word in snake.split("_"))


def key_path(parts: tuple[str | int, ...]) -> str:
    """How a location in the spec is written in messages: `parameters.Q.shape`, `constraints[0]`.

    A key that is not plain text (blanks, ':', '.', brackets, quotes: a mistyped or hostile key) has
    those characters shown as '?' and is cut to 40 characters, so that the path stays one
    readable token of the message; the message itself quotes the key where it matters.
    """
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
            continue
        segment = _NOT_PLAIN.sub("?", part) or "?"  # an empty key too
        segment = segment if len(segment) <= 40 else segment[:39] + "…"
        text += f".{segment}" if text else segment
    return text


_NOT_PLAIN = re.compile(r"[\s:.\[\]'\"]")
