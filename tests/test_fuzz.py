"""Property-based fuzzing of ``foldgen build`` with specs drawn from the grammar and mutated
shipped specs (issue 8): every spec exits 0 with a module that parses, imports quietly and
runs, or exits 2 with one located message and nothing written (tests/contract.py).

The budget is the hypothesis profile's (tests/conftest.py: "ci" is derandomised; "long" and
``python tests/fuzz_long.py --examples 10000`` are for local runs).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from contract import Worker, contract, message_problems, module_problems
from fuzz_strategies import SHIPPED, mutated_specs, valid_specs
from hypothesis import given

EXAMPLE_TIMEOUT = 10.0
"""Seconds for build, check, import and probe of one example: "a few seconds" with margin."""
FAST = {"max_iter": 50, "backward_max_iter": 50}
"""Constructor settings that keep one probing call short (non-convergence is then reported)."""


def run_contract(worker: Worker, raw: bytes) -> str:
    """The contract on one spec file holding `raw`; the report of what it broke ('' if none)."""
    with tempfile.TemporaryDirectory(prefix="foldgen-fuzz-") as scratch:
        example = Path(scratch)
        spec = example / "spec.yaml"
        spec.write_bytes(raw)
        verdict, _ = contract(
            worker, spec, example / "out", timeout=EXAMPLE_TIMEOUT, settings=FAST
        )
        return verdict.report()


@given(spec=valid_specs())
def test_specs_from_the_grammar_keep_the_contract(build_worker, spec):
    assert run_contract(build_worker, spec) == ""


@given(spec=mutated_specs())
def test_mutated_specs_keep_the_contract(build_worker, spec):
    assert run_contract(build_worker, spec) == ""


# The oracle itself, on known answers: it passes good builds and flags each kind of breach.


@pytest.mark.parametrize("index", range(len(SHIPPED)))
def test_shipped_specs_pass_the_oracle(build_worker, index):
    assert run_contract(build_worker, SHIPPED[index].encode()) == ""


def test_oracle_passes_a_located_keyed_message(build_worker):
    bad = SHIPPED[0].replace("minimize: ", "minimize: nosuchname + ", 1)
    assert run_contract(build_worker, bad.encode()) == ""


@pytest.mark.parametrize(
    ("stderr", "document", "expected"),
    [
        ("error: f.yaml:3:5: doc: expected a string\n", {"composes": True, "root": [1, 1]}, []),
        ("error: f.yaml:1:1: missing key 'name'\n", {"composes": True, "root": [1, 1]}, []),
        ("error: f.yaml:2:1: invalid YAML: bad\n", {"composes": False}, []),
        ("error: f.yaml: not UTF-8\n", {"file_level": True}, []),
        ("error: f.yaml: the file is empty\n", {"composes": True, "empty": True}, []),
        (
            "error: f.yaml:4:3: unknown key 'q'\n",
            {"composes": True, "root": [1, 1]},
            ["message: located inside the mapping but names no KEY"],
        ),
        ("error: f.yaml: bad\n", {"composes": True}, ["message: no LINE:COL"]),
        ("error: f.yaml:1:1: a: b\nmore\n", {}, ["message: not exactly one line"]),
        ("Traceback (most recent call last):\n  File x\n", {}, ["message: not exactly one line"]),
        ("error: g.yaml:1:1: a: b\n", {}, ["message: does not start with 'error: FILE:'"]),
        ("error: f.yaml:1:1: a: b\x1b[0m\n", {}, ["message: control character"]),
        (
            f"error: f.yaml:1:1: doc: {'x' * 2000}\n",
            {},
            ["message: longer than one readable line"],
        ),
    ],
)
def test_oracle_reads_messages(stderr, document, expected):
    assert [sig for sig, _ in message_problems(stderr, "f.yaml", document)] == expected


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('# h\n"""Doc."""\nimport torch\nX = 1\n', []),
        (
            '# h\n"""Doc."""\nimport os\nos.system("true")\n',
            ["module: unexpected top-level statement"],
        ),
        ('# h\n"""Doc."""\nimport numpy\n', ["module: imports outside torch and the stdlib"]),
        (
            '# h\nx = 1\n"""Doc."""\n',
            ["module: no module docstring first", "module: unexpected top-level statement"],
        ),
        ('# h\n"""Doc.\n', ["module: does not parse"]),
        ('# h\r\n"""Doc."""\r\n', ["module: CR or NUL in the source"]),
        ('"""Doc."""\n', ["module: header is not a few comment lines"]),
    ],
)
def test_oracle_reads_modules(source, expected):
    assert [sig for sig, _ in module_problems(source.encode())] == expected
