"""Spec text cannot become code: hostile docs and file names change only string constants.

Each hostile string is put where spec text reaches the generated source (the ``doc``, which
lands in two docstrings, and the spec's file name, which lands in the header comments). The
module must build, parse, and have *exactly* the abstract syntax tree of the benign build once
string constants are blanked out: no statement, name or expression more or less. The payload
must be found again, intact, inside the docstrings, and importing the module must run nothing
of it (no file written, nothing printed).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import json
import os
from pathlib import Path

import pytest
from spec_examples import BOX_QP

from foldgen.cli import main

BENIGN_DOC = "Box-constrained convex QP, differentiable in the linear term."

# Strings that have broken out of, or confused, a docstring, a comment or a Jinja template.
HOSTILE = [
    '"""',
    '"""; open("PWNED", "w")  #',
    "'''",
    '""""""',
    'ends with a quote"',
    "\\",
    "ends with a backslash\\",
    '\\"""; open("PWNED", "w"); """',
    "\\x41\\N{BULLET}\\u0041\\U0001F600\\0",
    "\x00",
    "\r",
    "\rimport os; os.mkdir('PWNED')\r",
    "\r\nopen('PWNED', 'w')\r\n",
    "\n\nopen('PWNED', 'w')\n\n",
    "\u2028open('PWNED', 'w')\u2029",
    "\x85\x0b\x0c\x1b[2J",
    "\t\ttabs",
    "\ud800 a lone surrogate \udfff",
    "{{ 7 * 7 }} {% raw %} {# comment #}",
    "+ACIAIgAi-\nopen('PWNED', 'w')\n+ACIAIgAi-",
    "# -*- coding: utf-7 -*-",
    "é 漢字 🙂 \u200b\u202e",
]
IDS = [f"h{i}" for i in range(len(HOSTILE))]


def spec_with_doc(doc: str) -> str:
    """BOX_QP with ``doc`` as a YAML double-quoted string (JSON escapes are YAML escapes)."""
    assert BOX_QP.count(BENIGN_DOC) == 1
    return BOX_QP.replace(BENIGN_DOC, json.dumps(doc))


def words(text: str) -> str:
    """Whitespace-normalised, lone surrogates as the text of their escapes (as the docstring
    holds them: a class docstring must be UTF-8)."""
    return " ".join(text.encode("utf-8", "backslashreplace").decode("utf-8").split())


def blanked(source: str) -> str:
    """The module's AST with every string constant replaced by one placeholder."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = "S"
    return ast.dump(tree)


def build_one(spec: Path, out: Path) -> str:
    with contextlib.redirect_stderr(io.StringIO()) as err:
        status = main(["build", str(spec), "-o", str(out)])
    assert status == 0, err.getvalue()
    return (out / "box_qp.py").read_bytes().decode("utf-8")


def import_quietly(path: Path, cwd: Path) -> object:
    """Import a module in this process with cwd at ``cwd``; nothing may be printed."""
    previous = Path.cwd()
    spec = importlib.util.spec_from_file_location(f"hostile_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    out = io.StringIO()
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out):
            spec.loader.exec_module(module)
    finally:
        os.chdir(previous)
    assert out.getvalue() == ""
    return module


@pytest.fixture(scope="module")
def benign(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("benign")
    spec = root / "box_qp.yaml"
    spec.write_text(BOX_QP, encoding="utf-8")
    return build_one(spec, root / "out")


@pytest.mark.parametrize("payload", HOSTILE, ids=IDS)
def test_hostile_doc_stays_inside_the_docstrings(payload, benign, tmp_path):
    spec = tmp_path / "box_qp.yaml"
    spec.write_text(spec_with_doc(payload), encoding="utf-8")
    source = build_one(spec, tmp_path / "out")
    assert blanked(source) == blanked(benign)
    module = import_quietly(tmp_path / "out" / "box_qp.py", tmp_path)
    # Intact up to whitespace (the class docstring is re-wrapped to its width).
    assert words(payload) in words(module.__doc__)
    assert words(payload) in words(module.BoxQp.__doc__)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box_qp.yaml", "out"]


def _file_name_payloads() -> list[str]:
    """The hostile strings a POSIX file name can hold (no '/', no NUL, encodable)."""
    out = []
    for payload in HOSTILE:
        name = f"box{payload}.yaml"
        if "/" in name or "\x00" in name:
            continue
        try:
            os.fsencode(name)
        except UnicodeEncodeError:
            continue
        out.append(payload)
    return out


@pytest.mark.parametrize("payload", _file_name_payloads())
def test_hostile_file_name_stays_inside_the_header_comments(payload, benign, tmp_path):
    spec = tmp_path / f"box{payload}.yaml"
    spec.write_text(BOX_QP, encoding="utf-8")
    source = build_one(spec, tmp_path / "out")
    assert blanked(source) == blanked(benign)
    lines = source.split("\n")
    assert all(line.startswith("# ") for line in lines[:3]) and lines[3].startswith('"""')
    assert "coding" not in "".join(lines[:2])
    import_quietly(tmp_path / "out" / "box_qp.py", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([spec.name, "out"])


def test_a_coding_declaration_in_the_file_name_cannot_re_encode_the_doc(benign, tmp_path):
    """Python reads ``coding: NAME`` in a module's first two lines as its source encoding;
    under UTF-7, ``+ACIAIgAi-`` is three quotes. The path is therefore never on those lines."""
    spec = tmp_path / "x -*- coding: utf-7 -*-.yaml"
    spec.write_text(spec_with_doc("+ACIAIgAi-\nopen('PWNED', 'w')\n+ACIAIgAi-"), "utf-8")
    source = build_one(spec, tmp_path / "out")
    assert blanked(source) == blanked(benign)
    import_quietly(tmp_path / "out" / "box_qp.py", tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_the_check_above_fails_on_an_injection(benign):
    """The structural comparison is not vacuous: code appended to a docstring shows."""
    doc_end = benign.index('"""', benign.index('"""') + 3)
    injected = benign[:doc_end] + '"""\nopen("PWNED", "w")\n"""' + benign[doc_end:]
    assert blanked(injected) != blanked(benign)
