"""The package version, in a leaf module so that every stage can name it without importing
the package's public API (and, through it, the whole pipeline)."""

__version__ = "0.1.0"
