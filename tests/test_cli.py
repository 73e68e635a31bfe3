"""The command line end to end: ``build`` and ``check``, exit statuses, bad specs, determinism.

Most tests run the CLI in-process through ``foldgen.cli.main``; a few run it as a real
process (``python -m foldgen.cli`` and the installed ``foldgen`` script) to prove that the
exit status is right and no traceback escapes. The bad-spec table is about errors found
end to end and after validation (expressions, shapes, constraint classification, rule
support); YAML/pydantic-level bad specs are covered by test_spec.py.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from spec_examples import BOX_QP, ENTROPIC_KNAPSACK

import foldgen
from foldgen.build import build
from foldgen.cli import main

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted((ROOT / "specs").glob("*.yaml"))
GOLDEN = Path(__file__).resolve().parent / "golden"
SCRIPT = Path(sys.executable).with_name("foldgen")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``foldgen ARGV`` in-process: (exit status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as exit_:  # argparse: --help, usage errors
        status = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def listing(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` (hidden temporaries included) and its bytes."""
    if not directory.exists():
        return {}
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(extra)
    return env


# ---------------------------------------------------------------------------------------------
# build


def test_build_writes_one_module_per_spec_and_says_so(tmp_path, capsys):
    box = write(tmp_path / "specs" / "box_qp.yaml", BOX_QP)
    knap = write(tmp_path / "specs" / "knapsack.yaml", ENTROPIC_KNAPSACK)
    out = tmp_path / "out"
    status, stdout, stderr = run(capsys, "build", str(box), str(knap), "-o", str(out))
    assert status == 0, stderr
    assert stderr == ""
    # Named after the spec's `name`, not the spec's file name.
    assert sorted(listing(out)) == ["box_qp.py", "entropic_knapsack.py"]
    assert str(out / "box_qp.py") in stdout
    assert str(out / "entropic_knapsack.py") in stdout
    assert (out / "box_qp.py").read_text(encoding="utf-8") == build(box, output_dir=out).source
    assert (out / "entropic_knapsack.py").read_text(encoding="utf-8") == build(
        knap, output_dir=out
    ).source


def test_build_is_idempotent(tmp_path, capsys):
    spec = write(tmp_path / "box_qp.yaml", BOX_QP)
    out = tmp_path / "out"
    assert run(capsys, "build", str(spec), "-o", str(out))[0] == 0
    first = listing(out)
    status, _, stderr = run(capsys, "build", str(spec), "-o", str(out))
    assert status == 0, stderr
    # Same bytes, and no temporary files left behind by the atomic write.
    assert listing(out) == first
    assert list(first) == ["box_qp.py"]


def test_build_replaces_an_edited_module(tmp_path, capsys):
    spec = write(tmp_path / "box_qp.yaml", BOX_QP)
    out = tmp_path / "out"
    run(capsys, "build", str(spec), "-o", str(out))
    target = out / "box_qp.py"
    good = target.read_bytes()
    target.write_text("# edited by hand\n", encoding="utf-8")
    status, stdout, _ = run(capsys, "build", str(spec), "-o", str(out))
    assert status == 0
    assert str(target) in stdout
    assert target.read_bytes() == good


def test_build_defaults_to_generated_dir(tmp_path, capsys, monkeypatch):
    write(tmp_path / "specs" / "box_qp.yaml", BOX_QP)
    monkeypatch.chdir(tmp_path)
    status, stdout, stderr = run(capsys, "build", "specs/box_qp.yaml")
    assert status == 0, stderr
    assert (tmp_path / "generated" / "box_qp.py").is_file()
    assert "box_qp.py" in stdout


def test_build_long_output_option(tmp_path, capsys):
    spec = write(tmp_path / "box_qp.yaml", BOX_QP)
    out = tmp_path / "nested" / "dir"
    status, _, stderr = run(capsys, "build", str(spec), "--output", str(out))
    assert status == 0, stderr
    assert (out / "box_qp.py").is_file()


def test_two_specs_with_the_same_name_are_rejected_and_nothing_is_written(tmp_path, capsys):
    a = write(tmp_path / "a.yaml", BOX_QP)
    b = write(tmp_path / "b.yaml", BOX_QP.replace("dims: {n: 50}", "dims: {n: 7}"))
    out = tmp_path / "out"
    status, _, stderr = run(capsys, "build", str(a), str(b), "-o", str(out))
    assert status == 2
    assert stderr.startswith("error: ")
    assert str(a) in stderr and str(b) in stderr and "box_qp" in stderr
    assert "Traceback" not in stderr
    assert not out.exists()


def test_unreadable_spec_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.yaml"
    status, _, stderr = run(capsys, "build", str(missing), "-o", str(tmp_path / "out"))
    assert status == 2
    assert stderr.startswith(f"error: {missing}: ")
    assert len(stderr.splitlines()) == 1
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# check


@pytest.fixture
def built(tmp_path, capsys):
    """Two specs built into tmp_path/out: (spec paths, output dir)."""
    specs = [
        write(tmp_path / "box_qp.yaml", BOX_QP),
        write(tmp_path / "entropic_knapsack.yaml", ENTROPIC_KNAPSACK),
    ]
    out = tmp_path / "out"
    assert run(capsys, "build", *map(str, specs), "-o", str(out))[0] == 0
    return [str(s) for s in specs], out


def test_check_fresh_exits_0(built, capsys):
    specs, out = built
    before = listing(out)
    status, _, stderr = run(capsys, "check", *specs, "-o", str(out))
    assert status == 0, stderr
    assert stderr == ""
    assert listing(out) == before  # check never writes


def test_check_names_an_edited_module(built, capsys):
    specs, out = built
    target = out / "box_qp.py"
    target.write_text(target.read_text(encoding="utf-8") + "\n# local tweak\n", encoding="utf-8")
    before = listing(out)
    status, _, stderr = run(capsys, "check", *specs, "-o", str(out))
    assert status == 1
    assert str(target) in stderr
    assert str(out / "entropic_knapsack.py") not in stderr  # only the stale one is named
    assert "foldgen build" in stderr  # tells how to refresh
    assert "Traceback" not in stderr
    assert listing(out) == before  # check never writes


def test_check_names_a_missing_module(built, capsys):
    specs, out = built
    (out / "entropic_knapsack.py").unlink()
    status, _, stderr = run(capsys, "check", *specs, "-o", str(out))
    assert status == 1
    assert str(out / "entropic_knapsack.py") in stderr
    assert "missing" in stderr
    assert not (out / "entropic_knapsack.py").exists()


def test_check_missing_output_dir_exits_1(built, capsys, tmp_path):
    specs, _ = built
    status, _, stderr = run(capsys, "check", *specs, "-o", str(tmp_path / "elsewhere"))
    assert status == 1
    assert "box_qp.py" in stderr and "entropic_knapsack.py" in stderr
    assert not (tmp_path / "elsewhere").exists()


def test_check_names_an_orphan_module(built, capsys):
    specs, out = built
    # A module foldgen generated from a spec that is no longer given (here: box_qp.yaml).
    orphan = out / "box_qp.py"
    status, _, stderr = run(capsys, "check", specs[1], "-o", str(out))
    assert status == 1
    assert str(orphan) in stderr
    # A hand-written module in the same directory is not foldgen's business.
    write(out / "helpers.py", "def helper():\n    return 1\n")
    status, _, stderr = run(capsys, "check", *specs, "-o", str(out))
    assert status == 0, stderr
    assert "helpers.py" not in stderr


def test_check_with_a_bad_spec_exits_2(built, capsys, tmp_path):
    specs, out = built
    bad = write(tmp_path / "bad.yaml", BOX_QP.replace("+ c @ x", "+ cc @ x"))
    status, _, stderr = run(capsys, "check", *specs, str(bad), "-o", str(out))
    assert status == 2
    assert stderr.startswith(f"error: {bad}:10:")


# ---------------------------------------------------------------------------------------------
# help and usage


def test_top_level_help(capsys):
    status, stdout, _ = run(capsys, "--help")
    assert status == 0
    for word in ("build", "check", "-o"):
        assert word in stdout
    assert "exit status" in stdout.lower()
    assert (
        re.search(r"\b0\b", stdout) and re.search(r"\b1\b", stdout) and re.search(r"\b2\b", stdout)
    )


@pytest.mark.parametrize("command", ["build", "check"])
def test_command_help(capsys, command):
    status, stdout, _ = run(capsys, command, "--help")
    assert status == 0
    assert "-o" in stdout and "DIR" in stdout
    assert "SPEC" in stdout
    # A user reading `foldgen build --help` learns what the exit statuses mean.
    assert "exit status" in stdout.lower(), stdout


def test_version(capsys):
    status, stdout, _ = run(capsys, "--version")
    assert status == 0
    assert foldgen.__version__ in stdout


@pytest.mark.parametrize("argv", [[], ["build"], ["frobnicate", "x.yaml"]], ids=repr)
def test_usage_errors_exit_2(capsys, argv):
    status, _, stderr = run(capsys, *argv)
    assert status == 2
    assert "usage:" in stderr
    assert "Traceback" not in stderr


# ---------------------------------------------------------------------------------------------
# Bad specs: each is BOX_QP with one change, and the message, key and position it must produce.
#
#  1 foldgen: 1
#  2 name: box_qp
#  3 doc: Box-constrained convex QP, differentiable in the linear term.
#  4 dims: {n: 50}
#  5 parameters:
#  6   Q: {shape: [n, n], grad: false, properties: [symmetric, psd]}
#  7   c: {shape: [n]}
#  8 variables:
#  9   x: {shape: [n]}
# 10 minimize: 0.5 * x @ Q @ x + c @ x
# 11 constraints:
# 12   - 0 <= x <= 1
# 13 solver: {rule: pgd, step_size: auto, max_iter: 2000, tol: 1.0e-9}
# 14 backward: {method: gmres, max_iter: 200, tol: 1.0e-10}


@dataclass(frozen=True)
class Bad:
    id: str
    old: str  # replaced once in BOX_QP ...
    new: str  # ... by this
    key: str | None  # the key after file:line:col (None: the message has none, e.g. bad YAML)
    line: int
    col: int
    fragments: tuple[str, ...]  # each must occur in the message

    @property
    def text(self) -> str:
        assert BOX_QP.count(self.old) == 1, self.old  # a case cannot silently miss
        return BOX_QP.replace(self.old, self.new)


OBJECTIVE = "minimize: 0.5 * x @ Q @ x + c @ x"
BOX = "  - 0 <= x <= 1\n"
RULE = "rule: pgd, step_size: auto,"

BAD = [
    # expressions: names, functions, syntax
    Bad("unknown-name", "+ c @ x", "+ cc @ x", "minimize", 10, 11,
        ("unknown name 'cc'", "did you mean 'c'?")),
    Bad("unknown-function", "+ c @ x", "+ softplu(c @ x)", "minimize", 10, 11,
        ("unknown function 'softplu'", "did you mean 'softplus'?")),
    Bad("syntax", OBJECTIVE, "minimize: 0.5 * x @@ Q", "minimize", 10, 11,
        ("invalid syntax",)),
    Bad("dunder-attribute", OBJECTIVE, "minimize: x.__class__", "minimize", 10, 11,
        ("'.__class__'",)),
    Bad("dunder-call", OBJECTIVE, "minimize: __import__('os')", "minimize", 10, 11,
        ("unknown function '__import__'",)),
    Bad("constraint-unknown-name", BOX, "  - 0 <= y <= 1\n", "constraints[0]", 12, 5,
        ("unknown name 'y'",)),
    # shapes
    Bad("shape-mismatch", "  c: {shape: [n]}", "  c: {shape: [3]}", "minimize", 10, 11,
        ("c @ x", "[3]", "[n]", "'@'")),
    Bad("shape-mismatch-const", "+ c @ x", "+ c @ ones(5)", "minimize", 10, 11,
        ("[n]", "[5]", "'@'")),
    Bad("matmul-by-scalar", OBJECTIVE, "minimize: x @ Q @ x @ c", "minimize", 10, 11,
        ("'@' needs vectors or matrices",)),
    Bad("non-scalar-objective", OBJECTIVE, "minimize: c * x", "minimize", 10, 11,
        ("objective must be a scalar", "[n]")),
    Bad("objective-without-variable", OBJECTIVE, "minimize: c @ c", "minimize", 10, 11,
        ("does not depend on any variable",)),
    # constraint classification
    Bad("constraint-without-variable", BOX, BOX + "  - sum(c) <= 1\n", "constraints[1]", 13, 5,
        ("involves no variable",)),
    Bad("strict-inequality", BOX, "  - x < 1\n", "constraints[0]", 12, 5,
        ("'<'", "not allowed", "'<='")),
    Bad("two-lower-bounds", BOX, BOX + "  - x >= -1\n", "constraints[1]", 13, 5,
        ("'x' already has", "lower bound", "constraints[0]")),
    # rule support
    Bad("pgd-no-projection", BOX, "  - Q @ x <= c\n", "constraints[0]", 12, 5,
        ("rule 'pgd'", "closed-form projection", "'admm' or 'sqp'")),
    Bad("pgd-intersection", BOX, BOX + "  - Q @ x == c\n", "constraints[1]", 13, 5,
        ("rule 'pgd'", "intersection", "[0], [1]", "'admm' or 'sqp'")),
    Bad("admm-nonlinear-constraint", BOX + "solver: {" + RULE,
        "  - sum(exp(x)) <= 1\n" + "solver: {rule: admm,", "constraints[0]", 12, 5,
        ("rule 'admm'", "affine", "rule 'sqp'")),
    Bad("sqp-nonsmooth", "c @ x\n" + "constraints:\n" + BOX + "solver: {" + RULE,
        "c @ x + norm1(x)\n" + "constraints:\n" + BOX + "solver: {rule: sqp,",
        "minimize", 10, 11, ("rule 'sqp'", "twice differentiable", "norm1")),
    # init
    Bad("init-unknown-name", "  x: {shape: [n]}", "  x: {shape: [n], init: k / n}",
        "variables.x.init", 9, 25, ("unknown name 'k'",)),
    Bad("init-shape", "  x: {shape: [n]}", "  x: {shape: [n], init: ones(3)}",
        "variables.x.init", 9, 25, ("init has shape [3]", "[n]")),
    # not YAML
    Bad("yaml-mapping-in-value", OBJECTIVE, OBJECTIVE + ": oops", None, 10, 34,
        ("invalid YAML", "mapping values are not allowed")),
    Bad("yaml-tab-indent", "  c: {shape: [n]}", "\tc: {shape: [n]}", None, 7, 1,
        ("invalid YAML", "'\\t'")),
]  # fmt: skip


def expected_prefix(bad: Bad, spec: Path | str) -> str:
    key = f"{bad.key}: " if bad.key else ""
    return f"error: {spec}:{bad.line}:{bad.col}: {key}"


def assert_one_message(bad: Bad, spec: Path | str, stderr: str) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith(expected_prefix(bad, spec)), lines[0]
    for fragment in bad.fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert "Traceback" not in stderr


@pytest.mark.parametrize("bad", BAD, ids=lambda b: b.id)
def test_bad_spec_exits_2_with_one_located_message(bad, tmp_path, capsys):
    spec = write(tmp_path / "box_qp.yaml", bad.text)
    out = tmp_path / "out"
    status, stdout, stderr = run(capsys, "build", str(spec), "-o", str(out))
    assert status == 2
    assert_one_message(bad, spec, stderr)
    assert "Traceback" not in stdout
    assert not out.exists()


@pytest.mark.parametrize("bad", BAD, ids=lambda b: b.id)
def test_bad_spec_next_to_a_good_one_writes_nothing(bad, tmp_path, capsys):
    good = write(tmp_path / "entropic_knapsack.yaml", ENTROPIC_KNAPSACK)
    spec = write(tmp_path / "box_qp.yaml", bad.text)
    out = tmp_path / "out"
    write(out / "keep.txt", "untouched\n")  # an existing output dir is left as it was
    before = listing(out)
    for command in ("build", "check"):
        status, _, stderr = run(capsys, command, str(good), str(spec), "-o", str(out))
        assert status == 2, command
        assert_one_message(bad, spec, stderr)
        assert listing(out) == before, command


def test_bad_spec_messages_golden(tmp_path, capsys, monkeypatch, request):
    """Every message of the table, verbatim, in one reviewable file (refresh: --update-golden)."""
    monkeypatch.chdir(tmp_path)
    lines = []
    for bad in BAD:
        write(tmp_path / f"{bad.id}.yaml", bad.text)
        _, _, stderr = run(capsys, "build", f"{bad.id}.yaml", "-o", "out")
        lines.append(stderr.rstrip("\n"))
    actual = "\n".join(lines) + "\n"
    golden = GOLDEN / "bad_spec_messages.txt"
    if request.config.getoption("--update-golden"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(actual, encoding="utf-8")
        return
    assert golden.exists(), f"no golden file; create it with: pytest {__file__} --update-golden"
    expected = golden.read_text(encoding="utf-8")
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile=str(golden),
                tofile="actual",
            )
        )
        pytest.fail(
            f"messages differ from the golden file:\n{diff}\n"
            f"if the change is intended, run: pytest {__file__} --update-golden"
        )


# ---------------------------------------------------------------------------------------------
# Real processes: exit statuses and no traceback outside pytest's capture.


def test_subprocess_bad_spec(tmp_path):
    bad = BAD[0]
    spec = write(tmp_path / "box_qp.yaml", bad.text)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "foldgen.cli", "build", str(spec), "-o", str(out)],
        capture_output=True,
        check=False,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 2
    assert_one_message(bad, spec, proc.stderr)
    assert "Traceback" not in proc.stdout
    assert not out.exists()


def test_subprocess_script_build_and_check(tmp_path):
    assert SCRIPT.exists(), f"the console script is not installed next to {sys.executable}"
    spec = write(tmp_path / "box_qp.yaml", BOX_QP)
    out = tmp_path / "out"

    def foldgen_(*argv):
        return subprocess.run(
            [str(SCRIPT), *argv],
            capture_output=True,
            check=False,
            text=True,
            cwd=tmp_path,
            env=subprocess_env(),
            timeout=120,
        )

    proc = foldgen_("build", str(spec), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / "box_qp.py").is_file()
    assert proc.stderr == ""
    assert foldgen_("check", str(spec), "-o", str(out)).returncode == 0
    (out / "box_qp.py").write_text("# stale\n", encoding="utf-8")
    proc = foldgen_("check", str(spec), "-o", str(out))
    assert proc.returncode == 1
    assert "box_qp.py" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_repository_generated_dir_is_fresh():
    """`foldgen check specs/*.yaml -o generated` on the repository itself (what CI runs)."""
    proc = subprocess.run(
        [str(SCRIPT), "check", *(f"specs/{p.name}" for p in SPECS), "-o", "generated"],
        capture_output=True,
        check=False,
        text=True,
        cwd=ROOT,
        env=subprocess_env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------
# Determinism (STYLE.md practice 7)


def test_build_twice_gives_identical_bytes(tmp_path, capsys):
    spec = write(tmp_path / "box_qp.yaml", BOX_QP)
    for out in ("one", "two"):
        assert run(capsys, "build", str(spec), "-o", str(tmp_path / out))[0] == 0
    assert (tmp_path / "one" / "box_qp.py").read_bytes() == (
        tmp_path / "two" / "box_qp.py"
    ).read_bytes()
    assert build(spec).source == build(spec).source


def test_build_is_independent_of_the_hash_seed(tmp_path):
    """Every spec of the repository, built under two hash seeds: the same bytes."""
    outputs = []
    for seed in ("0", "1"):
        out = tmp_path / f"seed{seed}"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "foldgen.cli",
                "build",
                *(f"specs/{p.name}" for p in SPECS),
                "-o",
                str(out),
            ],
            capture_output=True,
            check=False,
            text=True,
            cwd=ROOT,
            env=subprocess_env(PYTHONHASHSEED=seed),
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        outputs.append(listing(out))
    assert len(outputs[0]) == len(SPECS)
    assert outputs[0].keys() == outputs[1].keys()
    for name in outputs[0]:
        assert outputs[0][name] == outputs[1][name], f"{name} depends on PYTHONHASHSEED"


def test_header(tmp_path, capsys, monkeypatch):
    spec = write(tmp_path / "box_qp.yaml", BOX_QP)
    monkeypatch.chdir(tmp_path)
    assert run(capsys, "build", "box_qp.yaml", "-o", "out")[0] == 0
    text = (tmp_path / "out" / "box_qp.py").read_text(encoding="utf-8")
    header = text.split('"""', 1)[0]  # the comment lines before the module docstring
    assert header.startswith("#")
    assert "@generated" in header
    assert "DO NOT EDIT" in header
    assert "box_qp.yaml" in header
    assert f"foldgen {foldgen.__version__}" in header
    digest = re.search(r"sha256: ([0-9a-f]{64})\b", header)
    assert digest, header
    assert digest.group(1) == hashlib.sha256(spec.read_bytes()).hexdigest()
    # No timestamps or machine-specific paths: an absolute tmp path would break reproducibility.
    assert str(tmp_path) not in text
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", header)


# ---------------------------------------------------------------------------------------------
# Size independence (STYLE.md practice 9): sizes are symbolic, only the recorded default moves.


def build_with_n(tmp_path: Path, n: int, capsys, monkeypatch) -> list[str]:
    """box_qp with dims {n: N}, built from a directory of its own under the same file name."""
    directory = tmp_path / f"n{n}"
    write(directory / "box_qp.yaml", BOX_QP.replace("dims: {n: 50}", f"dims: {{n: {n}}}"))
    monkeypatch.chdir(directory)
    status, _, stderr = run(capsys, "build", "box_qp.yaml", "-o", "out")
    assert status == 0, stderr
    return (directory / "out" / "box_qp.py").read_bytes().decode("utf-8").splitlines(keepends=True)


def test_size_independent_output(tmp_path, capsys, monkeypatch):
    small = build_with_n(tmp_path, 10, capsys, monkeypatch)
    large = build_with_n(tmp_path, 1000, capsys, monkeypatch)
    assert len(small) == len(large)
    differing = [(a, b) for a, b in zip(small, large) if a != b]
    allowed = [
        lambda line: line.startswith("# spec sha256:"),
        lambda line: line.startswith("DEFAULT_DIMS = "),
        # The docstring records the default sizes too (the "recorded default" of practice 9).
        lambda line: "default sizes" in line,
    ]
    unexpected = [pair for pair in differing if not any(ok(pair[0]) for ok in allowed)]
    assert not unexpected, "".join(difflib.unified_diff(small, large, "n = 10", "n = 1000"))
    assert any(a.startswith("DEFAULT_DIMS = ") for a, _ in differing)
    defaults = [(a, b) for a, b in differing if a.startswith("DEFAULT_DIMS = ")]
    assert defaults == [('DEFAULT_DIMS = {"n": 10}\n', 'DEFAULT_DIMS = {"n": 1000}\n')]


def test_size_does_not_change_the_byte_count(tmp_path, capsys, monkeypatch):
    a = "".join(build_with_n(tmp_path, 1000, capsys, monkeypatch)).encode("utf-8")
    b = "".join(build_with_n(tmp_path, 5000, capsys, monkeypatch)).encode("utf-8")
    assert len(a) == len(b)
