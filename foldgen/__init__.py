"""foldgen: compile a YAML spec of a parametric optimization problem into a PyTorch module."""

__version__ = "0.1.0"
