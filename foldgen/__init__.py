"""foldgen: compile a YAML spec of a parametric optimization problem into a PyTorch module.

- ``foldgen.compile(spec)``: the layer class, built in memory (a path, YAML text or a dict)
- ``foldgen.build(path)``: the generated module's source (what ``foldgen build`` writes)
- ``foldgen.load_generated(path)``: import a generated file by its path
- ``foldgen.SpecError``: every problem with a spec, one located message
- ``foldgen.ConvergenceWarning``, ``foldgen.ConvergenceError``: the classes every generated
  layer warns and raises with (one per process, shared by all modules)
"""

from foldgen._version import __version__
from foldgen.api import compile, compile_module, load_generated
from foldgen.build import Built, build
from foldgen.errors import SpecError
from foldgen.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DEFAULT_LIMITS",
    "Built",
    "ConvergenceError",
    "ConvergenceWarning",
    "Limits",
    "SpecError",
    "__version__",
    "build",
    "compile",
    "compile_module",
    "load_generated",
]


def __getattr__(name: str) -> object:
    """The shared warning classes, imported on first use (they need torch; compiling does
    not)."""
    if name in ("ConvergenceWarning", "ConvergenceError"):
        from foldgen.runtime import layer

        return getattr(layer, name)
    raise AttributeError(f"module 'foldgen' has no attribute {name!r}")
