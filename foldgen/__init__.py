"""foldgen: compile a YAML spec of a parametric optimization problem into a PyTorch module.

foldgen.compile(spec)     the layer class, built in memory (a path, YAML text or a dict)
foldgen.build(path)       the generated module's source (what ``foldgen build`` writes)
foldgen.SpecError         every problem with a spec: one located message
"""

from foldgen._version import __version__
from foldgen.api import compile, compile_module, load_generated
from foldgen.build import Built, build
from foldgen.errors import SpecError
from foldgen.limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DEFAULT_LIMITS",
    "Built",
    "Limits",
    "SpecError",
    "__version__",
    "build",
    "compile",
    "compile_module",
    "load_generated",
]
