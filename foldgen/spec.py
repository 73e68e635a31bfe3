"""The spec: a YAML file read into frozen, validated pydantic models that remember positions.

`load_spec` is the first stage of the pipeline. It composes the YAML node tree (keeping each
node's line and column, rejecting duplicate keys), validates it against `Spec`, and turns
the first problem into one `SpecError` that names the file, line, column and key. The models
check everything that does not need the expression parser: keys, types, settings of the
update rule, names, and the dims used in shapes. Expressions stay strings here; the parser
reports its problems through `LoadedSpec.error`, which knows where each one was written.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import keyword
import math
import os
import re
import stat
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Annotated, Any, ClassVar, Literal, get_args, get_origin

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from foldgen import dims, naming
from foldgen.errors import SpecError, shown
from foldgen.limits import DEFAULT_LIMITS, Limits
from foldgen.yamlread import Path, read_yaml

__all__ = [
    "SCHEMA_ID",
    "BackwardSpec",
    "LoadedSpec",
    "ParameterSpec",
    "Path",
    "Position",
    "SolverSpec",
    "Spec",
    "VariableSpec",
    "load_spec",
    "load_spec_text",
    "spec_schema",
]

Position = tuple[int | None, int | None]
"""1-based (line, column); None where unknown."""

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_CLASS_NAME = re.compile(r"[A-Z][A-Za-z0-9]*")
_MATRIX_PROPERTIES = ("symmetric", "psd", "pd", "diagonal")
# Modules a `<name>.py` beside user code must not shadow: what the generated code and the
# tools around it import, and the files Python itself runs at start-up.
_SHADOWED_MODULES = frozenset(
    {
        "torch", "numpy", "sympy", "jinja2", "markupsafe", "yaml", "pydantic", "foldgen",
        "typing_extensions", "filelock", "fsspec", "networkx", "mpmath", "triton", "setuptools",
        "pip", "pkg_resources", "sitecustomize", "usercustomize",
    }
)  # fmt: skip

# Context keys by which a validator says where, below its own location, the problem is.
_PATH = "foldgen_path"
_AT_KEY = "foldgen_at_key"
# The validation context's key for the build's `Limits`.
_LIMITS = "foldgen_limits"


def _fail(message: str, path: Path = (), *, at_key: bool = False) -> PydanticCustomError:
    """A validation error located `path` below the validator's own location.

    Pydantic locates an error at the field or model whose validator raised it; the extra
    path lets a model-level check point at the exact entry (`parameters.Q.shape[1]`).
    """
    return PydanticCustomError("foldgen", message, {_PATH: path, _AT_KEY: at_key})


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _not_bool(value: object) -> object:
    """Reject YAML booleans where a number is expected (pydantic's lax mode reads true as 1)."""
    if isinstance(value, bool):
        raise _fail(f"expected a number, got {shown(value)}")
    return value


# Floats accept numeric strings on purpose: PyYAML reads `1e-9` (no dot) as a string.
_Float = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
_PositiveFloat = Annotated[_Float, Field(gt=0)]
_PositiveInt = Annotated[int, Field(strict=True, gt=0)]


def _check_shape(value: object) -> object:
    """Shape entries are dim names or positive integers; the dims are checked by `Spec`."""
    if not isinstance(value, list | tuple):
        raise _fail(f"expected a list of dims such as [n] or [n, n], got {shown(value)}")
    for i, entry in enumerate(value):
        if isinstance(entry, bool) or not isinstance(entry, str | int):
            raise _fail(
                f"a shape entry is a dim name or a positive integer, got {shown(entry)}", (i,)
            )
        if isinstance(entry, int) and entry <= 0:
            raise _fail(f"a shape entry must be positive, got {entry}", (i,))
    return tuple(value)


_Shape = Annotated[tuple[str | int, ...], BeforeValidator(_check_shape)]


def _shape_text(shape: tuple[str | int, ...]) -> str:
    return "[" + ", ".join(str(entry) for entry in shape) + "]"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParameterSpec(_Frozen):
    """An input of the layer; `properties` are facts the compiler may rely on."""

    shape: _Shape = Field(
        default=(), description="Core shape: dim names or sizes, [] a scalar, e.g. [n, n]"
    )
    grad: bool = Field(default=True, description="Whether gradients flow to this input")
    default: _Float | None = Field(
        default=None, description="A default value (scalar parameters only)"
    )
    properties: tuple[Literal["symmetric", "psd", "pd", "diagonal", "nonneg"], ...] = Field(
        default=(),
        description="Facts the compiler may rely on (matrix properties need a square shape)",
    )

    @model_validator(mode="after")
    def _check(self) -> ParameterSpec:
        if self.default is not None and self.shape:
            raise _fail(
                f"a default is only allowed for scalar parameters (shape: []), "
                f"not for shape {_shape_text(self.shape)}",
                ("default",),
            )
        square = len(self.shape) == 2 and self.shape[0] == self.shape[1]
        for i, prop in enumerate(self.properties):
            if prop in _MATRIX_PROPERTIES and not square:
                raise _fail(
                    f"'{prop}' needs a square matrix shape such as [n, n], not {_shape_text(self.shape)}",
                    ("properties", i),
                )
        return self


class VariableSpec(_Frozen):
    """A decision variable; `init` is the forward's starting point (zeros, ones or an expression)."""

    shape: _Shape = Field(
        default=(), description="Shape: [] a scalar, [n] a vector, [m, n] a matrix"
    )
    init: Annotated[str, WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}]})] = (
        Field(
            default="zeros",
            description="The forward's starting point: zeros, ones, a number or an expression "
            "of the parameters",
        )
    )

    @field_validator("shape")
    @classmethod
    def _at_most_a_matrix(cls, shape: tuple[str | int, ...]) -> tuple[str | int, ...]:
        if len(shape) > 2:
            raise _fail(
                f"a variable is a scalar, a vector or a matrix (at most two axes), not "
                f"{_shape_text(shape)}; reshape it into a matrix"
            )
        return shape

    @field_validator("init", mode="before")
    @classmethod
    def _number_as_text(cls, value: object) -> object:
        # `init: 0.5` is an expression too; YAML hands it over as a number.
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        return value


class SolverSpec(_Frozen):
    """The update rule `U` and the forward's stopping; each rule has its own setting."""

    rule: Literal["pgd", "admm", "sqp"] = Field(
        description="The update rule: pgd (projected gradient), admm (splitting into prox "
        "blocks) or sqp (sequential quadratic programming)"
    )
    max_iter: _PositiveInt = Field(default=1000, description="Forward iterations at most")
    tol: _PositiveFloat = Field(
        default=1e-8, description="Forward tolerance on ‖U(x) − x‖, relative to the data's scale"
    )
    step_size: _PositiveFloat | Literal["auto"] | None = Field(
        default=None,
        validate_default=True,
        description="pgd only: a fixed step, or auto (1/L or a Hessian-scaled step; default)",
    )
    rho: _PositiveFloat | None = Field(
        default=None, validate_default=True, description="admm only: the starting penalty ρ (1.0)"
    )
    step: Annotated[_Float, Field(gt=0, le=1)] | None = Field(
        default=None, validate_default=True, description="sqp only: the step, in (0, 1] (1.0)"
    )
    adapt_rho: Annotated[bool, Field(strict=True)] | None = Field(
        default=None,
        validate_default=True,
        description="admm only: OSQP's residual-balancing ρ (true by default)",
    )

    # The rule each rule-specific key belongs to, and its default under that rule.
    _OWNER: ClassVar[dict[str, tuple[str, float | str | bool]]] = {
        "step_size": ("pgd", "auto"),
        "rho": ("admm", 1.0),
        "step": ("sqp", 1.0),
        "adapt_rho": ("admm", True),
    }

    @field_validator("step_size", mode="before")
    @classmethod
    def _number_or_auto(cls, value: object) -> object:
        # Checked here so that a bad value gives one message, not one per member of the union.
        if value is None or value == "auto":
            return value
        number = math.nan
        if isinstance(value, int | float | str) and not isinstance(value, bool):
            with contextlib.suppress(ValueError):
                number = float(value)
        if not 0 < number < math.inf:
            raise _fail(f"expected a positive number or 'auto', got {shown(value)}")
        return number

    @field_validator("step_size", "rho", "step", "adapt_rho")
    @classmethod
    def _belongs_to_rule(
        cls, value: float | str | bool | None, info: ValidationInfo
    ) -> float | str | bool | None:
        assert info.field_name is not None
        owner, default = cls._OWNER[info.field_name]
        rule = info.data.get("rule")
        if rule is None:  # the rule itself is invalid and already reported
            return value
        if rule != owner:
            if value is not None:
                raise _fail(
                    f"'{info.field_name}' applies to rule '{owner}', not '{rule}'", at_key=True
                )
            return None
        return default if value is None else value


class BackwardSpec(_Frozen):
    """How the backward pass solves its fixed-point linear system."""

    method: Literal["lfpi", "gmres", "cg", "direct", "active_set", "auto"] = Field(
        default="auto",
        description="The adjoint solver of (I − Φᵀ) v = ∂L/∂x*; auto chooses per call",
    )
    max_iter: _PositiveInt = Field(default=500, description="Adjoint solver iterations at most")
    tol: _PositiveFloat = Field(
        default=1e-10, description="Relative residual the adjoint solve must meet"
    )


class Spec(_Frozen):
    """A foldgen spec: a parametric optimization problem and the rule that solves it."""

    foldgen: Literal[1] = Field(description="The spec format's version: 1")
    name: str = Field(description="snake_case module name: the build writes <name>.py")
    class_: str | None = Field(
        default=None, alias="class", description="The layer's class name (default: CamelCase name)"
    )
    doc: str | None = Field(default=None, description="One line for the module's docstring")
    dims: dict[str, _PositiveInt] = Field(
        default={}, description="Named sizes and their defaults, e.g. {n: 50}"
    )
    parameters: dict[str, ParameterSpec] = Field(description="The layer's inputs, by name")
    variables: dict[str, VariableSpec] = Field(description="The decision variables, by name")
    minimize: str | None = Field(
        default=None, description="The objective to minimise (or give maximize)"
    )
    maximize: str | None = Field(
        default=None, description="The objective to maximise (or give minimize)"
    )
    constraints: tuple[str, ...] = Field(
        default=(),
        description="Each an expression with ==, <=, >= or >> (PSD), or a set membership",
    )
    solver: SolverSpec = Field(description="The update rule and the forward's stopping")
    backward: BackwardSpec = Field(
        default=BackwardSpec(), description="How the backward solves its adjoint system"
    )

    @property
    def objective(self) -> str:
        """The objective expression, whichever sense it was given in."""
        objective = self.minimize if self.minimize is not None else self.maximize
        assert objective is not None  # guaranteed by validation
        return objective

    @property
    def sense(self) -> Literal["minimize", "maximize"]:
        return "minimize" if self.minimize is not None else "maximize"

    @property
    def class_name(self) -> str:
        """The generated class: `class:` if given, else the CamelCase of `name`."""
        return self.class_ or naming.class_name(self.name)

    @field_validator("foldgen", mode="before")
    @classmethod
    def _version(cls, value: object) -> object:
        if type(value) is not int or value != 1:
            raise _fail(
                f"unsupported format version {shown(value)}; this foldgen reads 'foldgen: 1'"
            )
        return value

    @field_validator("name")
    @classmethod
    def _module_name(cls, name: str, info: ValidationInfo) -> str:
        # The name becomes `<name>.py`, which must be importable without shadowing anything.
        _check_length(name, info)
        if not naming.is_snake_case(name):
            raise _fail(
                f"{shown(name)} is not snake_case (lowercase ASCII words joined by '_', "
                "e.g. 'box_qp')"
            )
        if keyword.iskeyword(name):
            raise _fail(f"'{name}' is a Python keyword, so '{name}.py' could not be imported")
        if name in _SHADOWED_MODULES or name in sys.stdlib_module_names:
            raise _fail(f"'{name}.py' would shadow the module '{name}' that Python code imports")
        return name

    @field_validator("class_")
    @classmethod
    def _class(cls, name: str | None, info: ValidationInfo) -> str | None:
        if name is None:
            return name
        _check_length(name, info)
        if not _CLASS_NAME.fullmatch(name):
            raise _fail(
                f"{shown(name)} is not a class name (an ASCII capital letter, then ASCII "
                "letters and digits)"
            )
        return name

    @field_validator("doc")
    @classmethod
    def _doc(cls, doc: str | None, info: ValidationInfo) -> str | None:
        limits = _limits(info)
        if doc is not None and len(doc) > limits.text_chars:
            raise _fail(
                f"the doc is longer than {limits.text_chars} characters; "
                + limits.raise_hint("text_chars")
            )
        return doc

    @field_validator("dims")
    @classmethod
    def _dim_sizes(cls, dims: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        for name, size in dims.items():
            _check_size(size, info, (name,))
        return dims

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> Spec:
        if (self.minimize is None) == (self.maximize is None):
            if self.minimize is None:
                raise _fail("missing key 'minimize' or 'maximize'")
            raise _fail(
                "give exactly one of 'minimize' and 'maximize', not both",
                ("maximize",),
                at_key=True,
            )
        if not self.variables:
            raise _fail("declare at least one variable", ("variables",))
        if not self.parameters:
            raise _fail(
                "declare at least one parameter: the layer's inputs (a problem without any "
                "has one constant solution)",
                ("parameters",),
            )
        self._check_names(_limits(info))
        self._check_shapes(_limits(info))
        self._check_expressions()
        where = "class" if self.class_ is not None else "name"
        reason = naming.reserved_reason(self.class_name)
        if reason is not None:
            raise _fail(f"the class name '{self.class_name}' is reserved: {reason}", (where,))
        for group in ("parameters", "variables", "dims"):
            if self.class_name in getattr(self, group):
                raise _fail(
                    f"the class name '{self.class_name}' is also the name of one of the "
                    f"{group}; choose another 'class:'",
                    (where,),
                )
        return self

    def _check_names(self, limits: Limits) -> None:
        """Dims, parameters and variables share one namespace in expressions and generated code."""
        declared: dict[str, str] = {}
        warm_starts = {f"{v}_init": v for v in self.variables}
        for group in ("dims", "parameters", "variables"):
            for name in getattr(self, group):
                where = (group, name)
                if len(name) > limits.name_chars:
                    raise _fail(_too_long(name, limits), where, at_key=True)
                if not _NAME.fullmatch(name):
                    raise _fail(
                        f"{shown(name)} is not a valid name (ASCII letters, digits and '_', "
                        "starting with a letter)",
                        where,
                        at_key=True,
                    )
                reason = naming.reserved_reason(name)
                if name in warm_starts:
                    reason = (
                        f"'{name}' is the layer's warm-start argument for variable "
                        f"'{warm_starts[name]}'"
                    )
                if reason is not None:
                    raise _fail(
                        f"{reason}; choose another name, such as '{name}_'", where, at_key=True
                    )
                if name in declared:
                    raise _fail(
                        f"'{name}' is already declared in {declared[name]}", where, at_key=True
                    )
                declared[name] = group

    def _check_shapes(self, limits: Limits) -> None:
        for group in ("parameters", "variables"):
            for name, item in getattr(self, group).items():
                for i, entry in enumerate(item.shape):
                    where = (group, name, "shape", i)
                    if (
                        group == "variables"
                        and isinstance(entry, str)
                        and not _NAME.fullmatch(entry)
                    ):
                        self._check_size_expression(entry, where, limits)
                        continue
                    if isinstance(entry, str) and entry not in self.dims:
                        raise _fail(self._unknown_dim(entry), where)
                    if isinstance(entry, int) and entry > limits.dim_size:
                        raise _fail(_too_big(entry, limits), where)

    def _check_size_expression(self, entry: str, where: Path, limits: Limits) -> None:
        """A variable's size may be arithmetic of dims (``T + 1``): declared dims, integers,
        ``+ - *``, and positive at every size."""
        if len(entry) > limits.name_chars:
            raise _fail(f"the size {shown(entry)} is too long", where)
        try:
            used = dims.names(entry)
        except (dims.DimError, ValueError, TypeError):
            raise _fail(
                f"a shape entry is a dim name, a positive integer or arithmetic of dims "
                f"(such as T + 1), got {shown(entry)}",
                where,
            ) from None
        for name in used:
            if name not in self.dims:
                raise _fail(self._unknown_dim(name), where)
        size = dims.evaluate(entry, dict(self.dims))
        if size < 1:
            raise _fail(f"the size {shown(entry)} is {size} at the declared dims", where)
        if size > limits.dim_size:
            raise _fail(_too_big(size, limits), where)

    def _check_expressions(self) -> None:
        """Expressions are ASCII: Python would fold look-alike letters (NFKC: 'ｘ' is 'x')."""
        texts: list[tuple[Path, str]] = [((self.sense,), self.objective)]
        texts += [(("constraints", i), c) for i, c in enumerate(self.constraints)]
        texts += [(("variables", n, "init"), v.init) for n, v in self.variables.items()]
        for where, text in texts:
            odd = next((ch for ch in text if not ch.isascii()), None)
            if odd is not None:
                raise _fail(
                    f"expressions are ASCII; found {odd!r} (U+{ord(odd):04X}) at character "
                    f"{text.index(odd) + 1}",
                    where,
                )

    def _unknown_dim(self, dim: str) -> str:
        if not self.dims:
            if len(dim) > 40 or not _NAME.fullmatch(dim):
                return f"unknown dim {shown(dim)}; no dims are declared"
            return f"unknown dim '{dim}'; no dims are declared (add 'dims: {{{dim}: <size>}}')"
        declared = ", ".join(self.dims)
        return (
            f"unknown dim {shown(dim)}; declared dims: {declared}"
            f"{_did_you_mean(dim, list(self.dims))}"
        )


def _limits(info: ValidationInfo) -> Limits:
    """The build's limits, passed to validation as context (the defaults when validating
    without one)."""
    context = info.context or {}
    return context.get(_LIMITS, DEFAULT_LIMITS)


def _too_long(name: str, limits: Limits) -> str:
    return (
        f"a name of {len(name)} characters is longer than {limits.name_chars}; "
        + limits.raise_hint("name_chars")
    )


def _too_big(size: int, limits: Limits) -> str:
    return f"size {shown(size)} is larger than {limits.dim_size}; " + limits.raise_hint("dim_size")


def _check_length(name: str, info: ValidationInfo) -> None:
    limits = _limits(info)
    if len(name) > limits.name_chars:
        raise _fail(_too_long(name, limits))


def _check_size(size: int, info: ValidationInfo, path: Path) -> None:
    limits = _limits(info)
    if size > limits.dim_size:
        raise _fail(_too_big(size, limits), path)


@dataclass(frozen=True)
class LoadedSpec:
    """A validated spec with where it came from, so later stages can report located errors.

    `positions` maps a path to the (line, column) of its value; `key_positions` maps a
    mapping entry's path to the position of its key.
    """

    spec: Spec
    file: str
    text: str
    sha256: str
    positions: Mapping[Path, tuple[int, int]]
    key_positions: Mapping[Path, tuple[int, int]]
    limits: Limits = DEFAULT_LIMITS

    def locate(self, path: Path, *, at_key: bool = False) -> Position:
        """Where `path` was written, or the nearest enclosing entry that has a position."""
        return _locate(self.positions, self.key_positions, path, at_key)

    def error(self, path: Path, message: str, *, at_key: bool = False) -> SpecError:
        """A `SpecError` for `path`, e.g. ``error(("constraints", 2), "unknown name 'y'")``."""
        line, col = self.locate(path, at_key=at_key)
        return SpecError(
            message, file=self.file, line=line, col=col, key=naming.key_path(path) or None
        )


def load_spec(path: str | os.PathLike[str], limits: Limits = DEFAULT_LIMITS) -> LoadedSpec:
    """Read, parse and validate a spec file; any problem raises one `SpecError`."""
    file = os.fspath(path)
    data = _read(file, limits)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        col = err.start - data.rfind(b"\n", 0, err.start)
        raise SpecError(
            f"the spec is not UTF-8 text ({err.reason} at byte {err.start})",
            file=file,
            line=line,
            col=col,
        ) from None
    return _load(text, file, hashlib.sha256(data).hexdigest(), limits)


def _read(file: str, limits: Limits) -> bytes:
    """The bytes of a regular file of at most ``limits.spec_bytes``.

    Opened without blocking and checked on the open descriptor, so a FIFO, a device such as
    /dev/zero or a directory is refused at once, and a file that grows is read no further
    than the limit. Symlinks are followed: what counts is the file they lead to.
    """
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise SpecError(f"cannot read the spec: {err.strerror or err}", file=file) from None
    with os.fdopen(fd, "rb") as stream:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise SpecError(f"cannot read the spec: it is {kind}", file=file)
        try:
            data = stream.read(limits.spec_bytes + 1)
        except OSError as err:
            raise SpecError(f"cannot read the spec: {err.strerror or err}", file=file) from None
    if len(data) > limits.spec_bytes:
        raise SpecError(
            f"the spec is larger than {limits.spec_bytes} bytes; "
            + limits.raise_hint("spec_bytes"),
            file=file,
        )
    return data


def load_spec_text(text: str, file: str, limits: Limits = DEFAULT_LIMITS) -> LoadedSpec:
    """`load_spec` for a spec held in a string; `file` is the name used in messages."""
    encoded = text.encode("utf-8", "surrogatepass")
    if len(encoded) > limits.spec_bytes:
        raise SpecError(
            f"the spec is larger than {limits.spec_bytes} bytes; "
            + limits.raise_hint("spec_bytes"),
            file=file,
        )
    return _load(text, file, hashlib.sha256(encoded).hexdigest(), limits)


def _load(text: str, file: str, sha256: str, limits: Limits) -> LoadedSpec:
    """Read the YAML safely, then validate it: the shared body of both loaders."""
    document = read_yaml(text, file, limits)
    data, positions, key_positions = document.data, document.positions, document.key_positions
    if not isinstance(data, dict):
        line, col = _locate(positions, key_positions, (), False)
        if line is None:  # no YAML value at all (an empty file, or only comments)
            line, col = text.count("\n") + 1, 1
        got = {type(None): "nothing", list: "a list"}.get(
            type(data), f"the single value {shown(data)}"
        )
        raise SpecError(
            f"a spec is a mapping of keys (foldgen, name, parameters, ...), but this file holds {got}",
            file=file,
            line=line,
            col=col,
        )
    try:
        spec = Spec.model_validate(data, context={_LIMITS: limits})
    except ValidationError as err:
        raise _spec_error(err, data, file, positions, key_positions) from None
    return LoadedSpec(
        spec,
        file,
        text,
        sha256,
        MappingProxyType(positions),
        MappingProxyType(key_positions),
        limits,
    )


def _locate(
    positions: Mapping[Path, tuple[int, int]],
    key_positions: Mapping[Path, tuple[int, int]],
    path: Path,
    at_key: bool,
) -> Position:
    if at_key and path in key_positions:
        return key_positions[path]
    for depth in range(len(path), -1, -1):
        if path[:depth] in positions:
            return positions[path[:depth]]
    return None, None


# Pydantic messages rewritten for someone who writes YAML, not Python.
_TYPE_MESSAGES = {
    "dict_type": "expected a mapping (key: value entries)",
    "model_type": "expected a mapping (key: value entries)",
    "model_attributes_type": "expected a mapping (key: value entries)",
    "tuple_type": "expected a list",
    "list_type": "expected a list",
    "string_type": "expected a string",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
}


def _spec_error(
    err: ValidationError,
    data: dict[str, Any],
    file: str,
    positions: Mapping[Path, tuple[int, int]],
    key_positions: Mapping[Path, tuple[int, int]],
) -> SpecError:
    """The first validation problem as one located `SpecError` (a count stands for the rest)."""
    errors = err.errors(include_url=False)
    first = errors[0]
    path, message, at_key = _explain(first, data)
    if len(errors) > 1:
        more = len(errors) - 1
        message += f" (and {more} more problem{'s' if more > 1 else ''})"
    line, col = _locate(positions, key_positions, path, at_key)
    return SpecError(message, file=file, line=line, col=col, key=naming.key_path(path) or None)


def _explain(error: ErrorDetails, data: dict[str, Any]) -> tuple[Path, str, bool]:
    """The path, message and whether to point at the key, for one pydantic error."""
    kind = error["type"]
    ctx = error.get("ctx", {})
    path = _data_path(error["loc"], data)
    got = error.get("input")
    if kind == "foldgen":
        return (*path, *ctx[_PATH]), error["msg"], ctx[_AT_KEY]
    if kind == "missing":
        return path[:-1], f"missing key '{path[-1]}'", False
    if kind == "extra_forbidden":
        key = str(path[-1])
        hint = _did_you_mean(key, _allowed_keys(path[:-1]))
        return path, f"unknown key {shown(key)}{hint}", True
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        hint = _did_you_mean(got, choices) if isinstance(got, str) else ""
        return path, f"{_reworded(error['msg'])}, got {shown(got)}{hint}", False
    message = _TYPE_MESSAGES.get(kind, _reworded(error["msg"]))
    if isinstance(got, list | dict):
        message += ", got a list" if isinstance(got, list) else ", got a mapping"
    else:
        message += f", got {shown(got)}"
    return path, message, False


def _reworded(message: str) -> str:
    """Pydantic's 'Input should be ...' reads as 'should be ...' after the key in a message."""
    return message.replace("Input should be", "should be", 1)


def _data_path(loc: tuple[str | int, ...], data: Any) -> Path:
    """The part of a pydantic `loc` that indexes the YAML data.

    Pydantic adds steps of its own (union members such as ``float`` or ``literal['auto']``,
    ``[key]`` for dict keys); those are dropped. The last step is kept even when absent, since
    it names a missing key.
    """
    path: list[str | int] = []
    for i, part in enumerate(loc):
        indexes = (isinstance(data, dict) and part in data) or (
            isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        )
        if indexes:
            data = data[part]
        elif i == len(loc) - 1 and isinstance(data, dict):
            data = None  # the name of a missing key
        else:
            continue
        path.append(part)
    return tuple(path)


def _allowed_keys(path: Path) -> list[str]:
    """The keys the model at `path` accepts (by their YAML names), for did-you-mean hints."""
    annotation: Any = Spec
    for part in path:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = next(
                (f for name, f in annotation.model_fields.items() if (f.alias or name) == part),
                None,
            )
            if field is None:
                return []
            annotation = field.annotation
        elif get_origin(annotation) is dict:
            annotation = get_args(annotation)[1]
        else:
            return []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [field.alias or name for name, field in annotation.model_fields.items()]
    return []


#: The schema's ``$id`` (a name, not a URL anything is fetched from).
SCHEMA_ID = "https://foldgen.invalid/spec-1.schema.json"

_JSON_BOUNDS = {
    "gt": "exclusiveMinimum",
    "ge": "minimum",
    "lt": "exclusiveMaximum",
    "le": "maximum",
}


def _standard_bounds(node: object) -> object:
    """pydantic writes a bound inside a union member as ``gt``/``le``: JSON Schema's names."""
    if isinstance(node, dict):
        return {_JSON_BOUNDS.get(k, k): _standard_bounds(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_standard_bounds(v) for v in node]
    return node


def spec_schema() -> dict[str, object]:
    """The JSON Schema (draft 2020-12) of a spec file, from the pydantic models: every key
    with its description, type, bounds and enums (``foldgen schema``). What the schema cannot
    say (expressions, names, shapes that agree) is checked by the build."""
    schema = _standard_bounds(Spec.model_json_schema(by_alias=True))
    assert isinstance(schema, dict)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
        "title": "foldgen spec",
    }
