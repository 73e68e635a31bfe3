"""Shared by the examples: import a generated module from generated/ without installing it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_generated(name: str):
    """generated/<name>.py as a module (build it first: foldgen build specs/*.yaml)."""
    path = ROOT / "generated" / f"{name}.py"
    if not path.exists():
        sys.exit(f"{path} is missing: run `foldgen build specs/{name}.yaml` first")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
