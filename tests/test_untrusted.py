"""The hostile-input corpus and the file-system cases of issue 8 ("specs are untrusted input").

Every file of /work/shared/untrusted (beside the project root) must keep the contract of its
README, checked by tests/contract.py: exit 0 with a module that parses, imports without side
effects and runs once on random data, or exit 2 with one located message and nothing written,
in bounded time and memory. The cases that need the file system (odd file names, symlinks,
odd files in the output directory, file modes, working directories) are made here on the fly.
All builds run in the shared worker subprocess (a per-request timeout and a 2 GiB address
space), so no case can take the test session down.
"""

from __future__ import annotations

import difflib
import os
import stat
from pathlib import Path

import pytest
from contract import PAYLOAD_FILE_NAMES, SENTINEL, Worker, cli, contract
from spec_examples import BOX_QP

CORPUS = Path(__file__).resolve().parent / "untrusted"
"""The hostile-input corpus a probe of foldgen found (its README says what each folder holds),
kept in the repository so that the suite runs it on any checkout."""
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "untrusted"
"""Where the team's copy of the corpus lives, beside the project, when it is there."""
FOLDERS = ("injection", "minimal", "resources", "fuzz_c1", "fuzz_c2")
FILES = sorted(CORPUS.rglob("*.yaml")) if CORPUS.is_dir() else []
CORPUS_TIMEOUT = 20.0
"""Seconds for build, check, import and one call of one corpus file."""
FAST = {"max_iter": 50, "backward_max_iter": 50}
"""Constructor settings for the call: a spec's own budget (20 000 line-searched iterations)
is the user's to spend, not part of the bounded-time contract of an untrusted build."""


def test_the_corpus_is_there():
    """Missing corpus is a failure, not a silently empty parametrisation."""
    assert CORPUS.is_dir(), f"the hostile-input corpus is missing: {CORPUS}"
    present = {path.relative_to(CORPUS).parts[0] for path in FILES}
    assert set(FOLDERS) <= present, f"folders without specs: {set(FOLDERS) - present}"


def test_the_corpus_is_the_teams():
    """The repository's copy holds every file of the team's corpus, byte for byte (where the
    team's copy is present: it is beside the project on the team's machines and in CI)."""
    if not SHARED.is_dir():
        return
    for theirs in sorted(SHARED.rglob("*")):
        if theirs.is_file():
            ours = CORPUS / theirs.relative_to(SHARED)
            assert ours.is_file() and ours.read_bytes() == theirs.read_bytes(), ours


@pytest.mark.parametrize(
    "path",
    FILES or [CORPUS / "missing.yaml"],
    ids=[str(p.relative_to(CORPUS)) for p in FILES] or ["corpus-missing"],
)
def test_corpus_file_keeps_the_contract(build_worker, tmp_path, path):
    assert path.is_file(), f"the hostile-input corpus is missing: {CORPUS}"
    verdict, _ = contract(
        build_worker, path, tmp_path / "out", timeout=CORPUS_TIMEOUT, settings=FAST
    )
    assert verdict.report() == ""


# --- Cases that need the file system -----------------------------------------------------


def _spec(directory: Path, name: str = "box_qp.yaml", text: str = BOX_QP) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def _no_traceback(run: dict) -> None:
    assert "timeout" not in run and "died" not in run, run
    assert run["exception"] is None, run["exception"]["traceback"]


def _one_error_line(run: dict, *mentions: str) -> str:
    _no_traceback(run)
    lines = run["stderr"].splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), run["stderr"]
    for mention in mentions:
        assert mention in lines[0], (mention, lines[0])
    return lines[0]


@pytest.mark.parametrize("name", PAYLOAD_FILE_NAMES, ids=["newline", "carriage-return"])
def test_file_name_with_a_line_break_builds_a_module_that_runs_no_code(
    build_worker, tmp_path, name
):
    """git allows such names; the path is copied into the header comments of the module."""
    _spec(tmp_path, name)
    verdict, result = contract(
        build_worker, name, tmp_path / "out", timeout=CORPUS_TIMEOUT, settings=FAST
    )
    assert verdict.rc == 0, result["runs"][0]["stderr"] if "runs" in result else result
    assert verdict.report() == ""
    assert result["import"]["sentinel"] is False, f"builtins.{SENTINEL} was set on import"


def test_spec_symlinked_to_etc_passwd_is_refused_without_echoing_it(build_worker, tmp_path):
    secret = Path("/etc/passwd").read_text(encoding="utf-8", errors="replace")
    (tmp_path / "spec.yaml").symlink_to("/etc/passwd")
    verdict, result = contract(
        build_worker, tmp_path / "spec.yaml", tmp_path / "out", timeout=CORPUS_TIMEOUT
    )
    stderr = result["runs"][0]["stderr"] if "runs" in result else ""
    match = difflib.SequenceMatcher(None, stderr, secret, autojunk=False).find_longest_match()
    assert match.size <= 80, f"echoes {match.size} characters of /etc/passwd: {stderr!r}"
    assert verdict.rc == 2 and verdict.report() == "", verdict.report()


def test_spec_symlinked_to_dev_zero_is_refused_at_once(build_worker, tmp_path):
    (tmp_path / "spec.yaml").symlink_to("/dev/zero")
    verdict, result = contract(
        build_worker, tmp_path / "spec.yaml", tmp_path / "out", timeout=CORPUS_TIMEOUT
    )
    assert verdict.rc == 2 and verdict.report() == "", verdict.report()
    assert result["runs"][0]["seconds"] < 2.0


def test_build_into_a_regular_file_is_an_error_not_a_traceback(build_worker, tmp_path):
    spec = _spec(tmp_path)
    target = tmp_path / "generated"
    target.write_text("not a directory\n", encoding="utf-8")
    run = cli(build_worker, ["build", str(spec), "-o", str(target)], tmp_path)
    _one_error_line(run, str(target))
    assert run["rc"] == 2
    assert target.read_text(encoding="utf-8") == "not a directory\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["box_qp.yaml", "generated"]


def test_check_against_a_regular_file_names_it_without_a_traceback(build_worker, tmp_path):
    """Either answer is honest: DIR holds nothing build would write (1), or DIR is unusable (2)."""
    spec = _spec(tmp_path)
    target = tmp_path / "generated"
    target.write_text("not a directory\n", encoding="utf-8")
    run = cli(build_worker, ["check", str(spec), "-o", str(target)], tmp_path)
    _no_traceback(run)
    assert run["rc"] in (1, 2) and str(target) in run["stderr"], run
    if run["rc"] == 2:
        _one_error_line(run, str(target))


def _built(worker: Worker, directory: Path) -> tuple[Path, Path]:
    """box_qp built into directory/generated; the spec and the output directory."""
    spec, out = _spec(directory), directory / "generated"
    run = cli(worker, ["build", str(spec), "-o", str(out)], directory)
    _no_traceback(run)
    assert run["rc"] == 0, run["stderr"]
    return spec, out


def _odd_entry(entry: Path, kind: str) -> None:
    """Something that is not a module foldgen wrote, at `entry`."""
    if kind == "directory":
        entry.mkdir()
    elif kind == "dangling-symlink":
        entry.symlink_to(entry.parent / "no-such-file.py")
    else:
        assert kind == "latin-1"
        entry.write_bytes("# café, ½ — not UTF-8\n".encode("latin-1", "replace"))


@pytest.mark.parametrize("kind", ["directory", "dangling-symlink", "latin-1"])
def test_check_ignores_what_foldgen_did_not_write(build_worker, tmp_path, kind):
    spec, out = _built(build_worker, tmp_path)
    _odd_entry(out / "x.py", kind)
    run = cli(build_worker, ["check", str(spec), "-o", str(out)], tmp_path)
    _no_traceback(run)
    assert (run["rc"], run["stderr"]) == (0, "")
    assert "up to date" in run["stdout"]


@pytest.mark.parametrize("kind", ["directory", "dangling-symlink", "latin-1"])
def test_check_reports_a_module_replaced_by_something_else(build_worker, tmp_path, kind):
    spec, out = _built(build_worker, tmp_path)
    module = out / "box_qp.py"
    module.unlink()
    _odd_entry(module, kind)
    run = cli(build_worker, ["check", str(spec), "-o", str(out)], tmp_path)
    _no_traceback(run)
    assert run["rc"] == 1 and str(module) in run["stderr"], (
        run["rc"],
        run["stdout"],
        run["stderr"],
    )


def test_check_reports_a_module_converted_to_crlf(build_worker, tmp_path):
    spec, out = _built(build_worker, tmp_path)
    module = out / "box_qp.py"
    module.write_bytes(module.read_bytes().replace(b"\n", b"\r\n"))
    run = cli(build_worker, ["check", str(spec), "-o", str(out)], tmp_path)
    _no_traceback(run)
    assert run["rc"] == 1 and str(module) in run["stderr"], (
        run["rc"],
        run["stdout"],
        run["stderr"],
    )


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_modules_are_written_with_the_mode_the_umask_gives(build_worker, tmp_path, umask, mode):
    spec, out = _spec(tmp_path), tmp_path / "generated"
    run = cli(build_worker, ["build", str(spec), "-o", str(out)], tmp_path, umask=umask)
    _no_traceback(run)
    assert run["rc"] == 0, run["stderr"]
    assert stat.S_IMODE(os.stat(out / "box_qp.py").st_mode) == mode


def test_check_gives_the_same_answer_from_any_working_directory(build_worker, tmp_path):
    project = tmp_path / "project"
    (project / "specs").mkdir(parents=True)
    (project / "elsewhere").mkdir()
    _spec(project / "specs")
    run = cli(build_worker, ["build", "specs/box_qp.yaml", "-o", "generated"], project)
    _no_traceback(run)
    assert run["rc"] == 0, run["stderr"]
    absolute = ["check", str(project / "specs/box_qp.yaml"), "-o", str(project / "generated")]
    for argv, cwd in [
        (["check", "specs/box_qp.yaml", "-o", "generated"], project),
        (["check", "../specs/box_qp.yaml", "-o", "../generated"], project / "elsewhere"),
        (absolute, project / "elsewhere"),
        (absolute, tmp_path),
    ]:
        run = cli(build_worker, argv, cwd)
        _no_traceback(run)
        assert (run["rc"], run["stderr"]) == (0, ""), (cwd, argv, run["stderr"])
