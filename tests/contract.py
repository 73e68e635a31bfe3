"""The untrusted-input contract of ``foldgen build`` as an executable oracle (issue 8).

A spec may come from a pull request, so for *any* bytes in a spec file, ``foldgen build FILE
-o DIR`` must either

* exit 2 with one located message ``error: FILE:LINE:COL: KEY: MESSAGE`` on stderr and write
  nothing, or
* exit 0 with one module in DIR that parses, imports without side effects and, called once on
  random default-size data (tests/probe.py), returns finite values or reports the elements
  that did not converge or are infeasible,

in bounded time and memory, and never with a traceback.

What "where they exist" means for the parts of the message:

* LINE:COL exist unless the problem is the file itself (unreadable, not a regular file, not
  UTF-8, over the size limit) or it holds no YAML node at all (empty, or only comments):
  any other text has a first character to point at.
* KEY exists unless the problem is the YAML text itself (it does not compose, or its root is
  not a mapping) or the message is about the whole document (it is located at the root node,
  e.g. a missing top-level key). A message pointing *inside* the mapping names the key there.

Builds run in a worker subprocess (``python tests/contract.py --worker``) that imports foldgen
and torch once, calls ``foldgen.cli.main`` in-process, and lives under an address-space limit;
the parent kills it after a per-request timeout. So an alias bomb, an exponential derivation
or a read of /dev/zero costs one failed case, never the test session.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

MEMORY_LIMIT = 2 << 30
"""Address space of the worker (bytes): far above a real build, far below the machine."""
SPEC_BYTES = 1_000_000
"""Spec files above this size may be refused without a position (foldgen's spec_bytes)."""
MESSAGE_CHARS = 1000
"""Longest acceptable message after the file name: one readable line, not an echo."""
PROBE_CAP = 64
"""tests/probe.py caps every dim at this size; sizes it cannot cap make the probe unsound."""
SENTINEL = "FOLDGEN_PWNED"
"""Hostile strings try to set ``builtins.FOLDGEN_PWNED``; importing a module must not."""
PAYLOAD = f"import builtins; builtins.{SENTINEL} = 1"
"""The injected code: harmless, and detected on import."""
PAYLOAD_FILE_NAMES = (f"x\n{PAYLOAD} #.yaml", f"x\r{PAYLOAD} #.yaml")
"""Spec file names (git allows them) that run PAYLOAD if copied verbatim into a comment."""

_ALLOWED_TOP_LEVEL = (ast.Import, ast.Assign, ast.AnnAssign, ast.ClassDef, ast.FunctionDef)

# KEY: segments joined by '.' and '[i]'; a segment is plain (no blank, ':', '.', '[', ']')
# or quoted. MESSAGE: the rest of the line.
_SEGMENT = r"(?:[^\s:.\[\]'\"]+|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
_KEY = rf"{_SEGMENT}(?:\.{_SEGMENT}|\[\d+\])*"


# ----------------------------------------------------------------------------------------
# The worker: one process, foldgen and torch imported once, main() called in-process.
# ----------------------------------------------------------------------------------------


@contextmanager
def _fd_capture() -> Iterator[list[str]]:
    """Everything written to file descriptors 1 and 2 (os.system, C extensions) meanwhile."""
    out: list[str] = []
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield out
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            sink.seek(0)
            out.append(sink.read().decode("utf-8", "backslashreplace"))


def _exception(err: BaseException) -> dict[str, Any]:
    """An exception as data: its type, message, traceback and innermost frames."""
    frames = traceback.extract_tb(err.__traceback__)
    own = [f for f in frames if "/foldgen/" in f.filename or "/templates/" in f.filename]
    generated = [f for f in frames if f.filename.startswith(tempfile.gettempdir())]
    return {
        "type": type(err).__name__,
        "message": str(err)[:500],
        "traceback": "".join(traceback.format_exception(err))[-6000:],
        "innermost": _frame(frames[-1]) if frames else None,
        "foldgen_frame": _frame(own[-1]) if own else None,
        "generated_frame": _frame(generated[-1]) if generated else None,
    }


def _frame(frame: traceback.FrameSummary) -> dict[str, Any]:
    return {"file": frame.filename, "name": frame.name, "line": frame.lineno}


def _run_main(argv: list[str]) -> dict[str, Any]:
    """``foldgen.cli.main(argv)`` with its output captured; a raised exception is data."""
    from foldgen.cli import main

    out, err = io.StringIO(), io.StringIO()
    result: dict[str, Any] = {"argv": argv, "rc": None, "exception": None}
    start = time.perf_counter()
    with _fd_capture() as fd, redirect_stdout(out), redirect_stderr(err):
        try:
            result["rc"] = main(argv)
        except SystemExit as stop:
            code = stop.code
            result["rc"] = code if isinstance(code, int) else (0 if code is None else 1)
        except BaseException as caught:  # noqa: BLE001 - a traceback is what we look for
            if isinstance(caught, KeyboardInterrupt):
                raise
            result["exception"] = _exception(caught)
    result.update(
        stdout=out.getvalue(),
        stderr=err.getvalue(),
        fd_output=fd[0],
        seconds=time.perf_counter() - start,
    )
    return result


def _document(path: str) -> dict[str, Any]:
    """What the oracle needs to know about a spec file to decide which message parts exist."""
    import yaml

    info: dict[str, Any] = {"file_level": False, "composes": False, "root": None}
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > SPEC_BYTES:
            info["file_level"] = True
            return info
        with open(path, "rb") as stream:
            text = stream.read().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        info["file_level"] = True
        return info
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except Exception:  # noqa: BLE001 - any failure to compose (RecursionError too) is YAML-level
        return info
    info["composes"] = True
    info["empty"] = node is None  # no first character to point at
    if isinstance(node, yaml.MappingNode):
        info["root"] = [node.start_mark.line + 1, node.start_mark.column + 1]
    return info


def _snapshot(root: str) -> list[str]:
    """Every path below `root` (hidden ones too), relative, sorted."""
    found = []
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            found.append(os.path.relpath(os.path.join(base, name), root))
    return sorted(found)


def _probe_unsound(spec: Any) -> str | None:
    """Why tests/probe.py cannot call this layer faithfully, or None.

    probe caps every size at 64; an integer size above that in a shape would then contradict
    the declared shape, and a dim no input carries would be allocated at its full default.
    """
    carried = {d for p in spec.parameters.values() for d in p.shape if isinstance(d, str)}
    for group in (spec.parameters, spec.variables):
        for item in group.values():
            for entry in item.shape:
                if isinstance(entry, int) and entry > PROBE_CAP:
                    return f"an integer size {entry} > {PROBE_CAP} in a shape"
    for name, size in spec.dims.items():
        if name not in carried and size > PROBE_CAP:
            return f"dim {name} = {size} > {PROBE_CAP} is carried by no input"
    return None


def _load_and_probe(request: dict[str, Any], say: Any) -> dict[str, Any]:
    """Import the one module the build wrote (in an empty working directory, all output
    captured) and call it once."""
    import builtins
    import importlib.util

    import torch

    sys.path.insert(0, str(TESTS))
    from probe import probe

    from foldgen.spec import load_spec

    out_dir, spec_path = request["out"], request["spec"]
    names = [n for n in os.listdir(out_dir) if n.endswith(".py") and not n.startswith(".")]
    result: dict[str, Any] = {"module": None, "import": None, "probe": None}
    if len(names) != 1:
        return result
    path = os.path.join(out_dir, names[0])
    result["module"] = path
    watched = request.get("watch") or os.path.dirname(out_dir)
    with tempfile.TemporaryDirectory() as scratch:
        before = _snapshot(watched), _snapshot(scratch)
        here = os.getcwd()
        os.chdir(scratch)
        out, err = io.StringIO(), io.StringIO()
        imported: dict[str, Any] = {"exception": None}
        module = None
        try:
            with _fd_capture() as fd, redirect_stdout(out), redirect_stderr(err):
                try:
                    unique = f"_fuzzed_{os.getpid()}_{time.monotonic_ns()}"
                    spec = importlib.util.spec_from_file_location(unique, path)
                    assert spec is not None and spec.loader is not None
                    module = importlib.util.module_from_spec(spec)
                    spec.loader.exec_module(module)
                except BaseException as caught:  # noqa: BLE001
                    if isinstance(caught, KeyboardInterrupt):
                        raise
                    imported["exception"] = _exception(caught)
                    module = None
        finally:
            os.chdir(here)
        imported.update(
            output=out.getvalue() + err.getvalue() + fd[0],
            sentinel=hasattr(builtins, SENTINEL),
            new_files=sorted(
                (set(_snapshot(watched)) - set(before[0]))
                | {f"<cwd>/{p}" for p in set(_snapshot(scratch)) - set(before[1])}
            ),
        )
        if hasattr(builtins, SENTINEL):
            delattr(builtins, SENTINEL)
    result["import"] = imported
    if module is None or not request.get("probe"):
        return result
    say("probe")
    probed: dict[str, Any] = {"skipped": None, "exception": None, "outcome": None}
    result["probe"] = probed
    start = time.perf_counter()
    try:
        spec_obj = load_spec(spec_path).spec
        probed["skipped"] = _probe_unsound(spec_obj)
        if probed["skipped"] is None:
            torch.manual_seed(0)
            outcome = probe(module, spec_obj, batch=(2,), **request.get("settings", {}))
            probed["outcome"] = [outcome.elements, outcome.converged, outcome.finite]
    except BaseException as caught:  # noqa: BLE001
        if isinstance(caught, KeyboardInterrupt):
            raise
        probed["exception"] = _exception(caught)
    probed["seconds"] = time.perf_counter() - start
    return result


def _warm_up() -> None:
    """Build, import and probe one spec of each rule, so that the lazy imports and caches of
    the first build (seconds) are not charged to the first request's timeout."""
    specs = [str(ROOT / "specs" / f"{n}.yaml") for n in ("box_qp", "tv_denoise", "portfolio")]
    with tempfile.TemporaryDirectory() as scratch:
        for spec in specs:
            out = os.path.join(scratch, Path(spec).stem)
            _run_main(["build", spec, "-o", out])
            request = {"out": out, "spec": spec, "probe": True, "settings": {"max_iter": 5}}
            _load_and_probe(request, lambda phase: None)


def _serve() -> None:
    """The worker loop: one JSON request per line on stdin, progress and one JSON result per
    line on the original stdout (file descriptor 1 itself is pointed at /dev/null, so that
    nothing printed can corrupt the protocol)."""
    import faulthandler
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    stacks = os.environ.get("FOLDGEN_WORKER_STACKS")
    if stacks:  # where the parent asks for the stack of a request that ran out of time
        faulthandler.register(signal.SIGUSR1, file=open(stacks, "w"), chain=False)
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    import torch

    torch.set_num_threads(1)
    import foldgen.cli  # noqa: F401 - imported once, before the first request is timed

    sys.path.insert(0, str(TESTS))
    import probe  # noqa: F401

    _warm_up()
    channel.write(json.dumps({"ready": True}) + "\n")

    def say(phase: str) -> None:
        channel.write(json.dumps({"phase": phase}) + "\n")

    for line in sys.stdin:
        request = json.loads(line)
        here, mask = os.getcwd(), os.umask(request.get("umask", 0o022))
        result: dict[str, Any] = {"runs": []}
        try:
            os.chdir(request.get("cwd") or here)
            for argv in request["commands"]:
                say(argv[0])
                run = _run_main(argv)
                result["runs"].append(run)
                if run["rc"] != 0 or run["exception"] is not None:
                    break
            if request.get("spec"):
                result["document"] = _document(request["spec"])
            first = result["runs"][0]
            if request.get("load") and first["rc"] == 0 and first["exception"] is None:
                say("import")
                result.update(_load_and_probe(request, say))
        finally:
            os.chdir(here)
            os.umask(mask)
        channel.write(json.dumps(result) + "\n")


# ----------------------------------------------------------------------------------------
# The parent side: a worker handle with a timeout, and the oracle.
# ----------------------------------------------------------------------------------------


@dataclass
class _Process:
    """One worker process, the bytes read from it past the last whole line, its stack file."""

    popen: subprocess.Popen[bytes]
    stacks: str
    pending: bytes = b""
    ready: bool = False


class Worker:
    """A build worker subprocess; `run` returns its result or a timeout/death record.

    After the first timeout a spare process is kept starting in the background, so that the
    next request does not wait for torch to import again.
    """

    def __init__(self) -> None:
        self.current: _Process | None = None
        self.spare: _Process | None = None
        self.starts = 0

    def _spawn(self) -> _Process:
        fd, stacks = tempfile.mkstemp(prefix="foldgen-worker-", suffix=".stack")
        os.close(fd)
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            MKL_NUM_THREADS="1",
            PYTHONHASHSEED="0",
            FOLDGEN_WORKER_STACKS=stacks,
        )
        popen = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=str(ROOT),
            env=env,
            start_new_session=True,
        )
        self.starts += 1
        return _Process(popen, stacks)

    def _ready(self) -> _Process:
        """The current process, started (or taken from the spare) and past its warm-up."""
        if self.current is not None and self.current.popen.poll() is None:
            return self.current
        if self.current is not None:
            self._discard(self.current)
        self.current, self.spare = (self.spare or self._spawn()), None
        process = self.current
        if not process.ready:
            message = self._read(process, time.monotonic() + 300.0)
            if not message or not message.get("ready"):
                self._discard(process)
                self.current = None
                raise RuntimeError("the build worker did not start")
            process.ready = True
        return process

    @staticmethod
    def _read(process: _Process, deadline: float) -> dict[str, Any] | None:
        """The next message, None at the deadline, ``{"died": status}`` at end of file.

        Reads the pipe itself (not a buffered reader), so that a line already received is
        never left waiting in a buffer that select() cannot see.
        """
        assert process.popen.stdout is not None
        fd = process.popen.stdout.fileno()
        while b"\n" not in process.pending:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
            if not ready:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return {"died": process.popen.wait()}
            process.pending += chunk
        line, process.pending = process.pending.split(b"\n", 1)
        return json.loads(line)

    @staticmethod
    def _stack(process: _Process) -> str:
        """The Python stack of a worker that ran out of time (faulthandler, on SIGUSR1)."""
        try:
            os.kill(process.popen.pid, signal.SIGUSR1)
        except ProcessLookupError:
            return ""
        for _ in range(20):
            time.sleep(0.05)
            text = Path(process.stacks).read_text(encoding="utf-8", errors="replace")
            if text.strip():
                return text
        return ""

    @staticmethod
    def _discard(process: _Process) -> None:
        try:
            os.killpg(process.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.popen.wait()
        for stream in (process.popen.stdin, process.popen.stdout):
            if stream is not None:
                stream.close()
        Path(process.stacks).unlink(missing_ok=True)

    def run(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One request; ``{"timeout": phase}`` or ``{"died": phase}`` if it did not finish."""
        process = self._ready()
        assert process.popen.stdin is not None
        process.popen.stdin.write(json.dumps(request).encode() + b"\n")
        process.popen.stdin.flush()
        deadline = time.monotonic() + timeout
        phase = "start"
        while True:
            message = self._read(process, deadline)
            if message is None:
                stack = self._stack(process)
                self._discard(process)
                self.current = None
                self.spare = self.spare or self._spawn()
                return {"timeout": phase, "seconds": timeout, "stack": stack}
            if "died" in message:
                self._discard(process)
                self.current = None
                return {"died": phase, "status": message["died"]}
            if "phase" in message:
                phase = message["phase"]
                continue
            return message

    def close(self) -> None:
        """Stop the processes (the current one by closing its input, as it expects)."""
        if self.current is not None and self.current.popen.stdin is not None:
            self.current.popen.stdin.close()
            try:
                self.current.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for process in (self.current, self.spare):
            if process is not None:
                self._discard(process)
        self.current = self.spare = None


@dataclass
class Verdict:
    """What one build did and which parts of the contract it broke."""

    rc: int | None = None
    violations: list[tuple[str, str]] = field(default_factory=list)
    """(signature, detail): the signature groups failures of one cause."""
    probed: bool = False
    probe_crashed: bool = False
    traceback: str | None = None

    def fail(self, signature: str, detail: str) -> None:
        self.violations.append((signature, detail))

    def report(self) -> str:
        return "\n".join(f"[{sig}] {detail}" for sig, detail in self.violations)


def exception_signature(phase: str, exc: dict[str, Any]) -> str:
    """A dedupe key for an exception: the phase, its type and the innermost frame of ours."""
    where = exc.get("generated_frame") if phase == "probe" else None
    if where is not None:
        place = f"<generated>:{where['name']}"
    else:
        where = exc.get("foldgen_frame") or exc.get("innermost")
        place = f"{_short(where['file'])}:{where['name']}" if where else "?"
    return f"{phase}: {exc['type']} in {place}"


def _short(filename: str) -> str:
    """`foldgen/spec.py`, `foldgen/runtime/qp.py`, or the base name."""
    parts = Path(filename).parts
    for anchor in ("foldgen", "templates"):
        if anchor in parts:
            return "/".join(parts[len(parts) - 1 - parts[::-1].index(anchor) :])
    return parts[-1] if parts else filename


def _stack_place(stack: str) -> str:
    """' at FILE:FUNCTION' for the innermost foldgen (or generated) frame of a faulthandler
    dump (most recent call first), or ''."""
    for line in stack.splitlines():
        m = re.match(r'\s*File "([^"]+)", line \d+ in (\S+)', line)
        if m and ("/foldgen/" in m.group(1) or "/templates/" in m.group(1)):
            return f" at {_short(m.group(1))}:{m.group(2)}"
        if m and m.group(1).startswith(tempfile.gettempdir()):
            return f" at <generated>:{m.group(2)}"
    return ""


def message_problems(
    stderr: str, given: str, document: dict[str, Any] | None
) -> list[tuple[str, str]]:
    """How an exit-2 stderr departs from one ``error: FILE:LINE:COL: KEY: MESSAGE`` line."""
    problems: list[tuple[str, str]] = []
    shown = repr(stderr[:300])
    if not stderr.endswith("\n") or len(stderr.splitlines()) != 1:
        problems.append(("message: not exactly one line", shown))
        return problems
    line = stderr[:-1]
    if any((ord(ch) < 32 and ch != "\t") or 0x7F <= ord(ch) < 0xA0 for ch in line):
        problems.append(("message: control character", shown))
    prefix = f"error: {given}:"
    if not line.startswith(prefix):
        problems.append(("message: does not start with 'error: FILE:'", shown))
        return problems
    rest = line[len(prefix) :]
    if len(rest) > MESSAGE_CHARS:
        problems.append(("message: longer than one readable line", f"{len(rest)} chars: {shown}"))
    document = document or {}
    located = re.match(r"(\d+):(\d+): ", rest)
    if located is None:
        if not (document.get("file_level") or document.get("empty")):
            problems.append(("message: no LINE:COL", shown))
        return problems
    position = [int(located.group(1)), int(located.group(2))]
    if position[0] < 1 or position[1] < 1:
        problems.append(("message: LINE or COL below 1", shown))
    body = rest[located.end() :]
    keyed = re.match(rf"({_KEY}): (.+)$", body)
    message = keyed.group(2) if keyed else body
    if not message.strip():
        problems.append(("message: empty MESSAGE", shown))
    if keyed is None:
        document_level = (
            document.get("file_level")
            or not document.get("composes")
            or document.get("root") is None
            or document.get("root") == position
        )
        if not document_level:
            problems.append(("message: located inside the mapping but names no KEY", shown))
    return problems


def module_problems(source_bytes: bytes) -> list[tuple[str, str]]:
    """Static checks of a written module: UTF-8, parses, a comment header then the docstring,
    and at the top level nothing that runs code beyond imports of torch and the stdlib."""
    try:
        source = source_bytes.decode("utf-8")
    except UnicodeDecodeError as err:
        return [("module: not UTF-8", str(err))]
    if "\r" in source or "\x00" in source:
        return [("module: CR or NUL in the source", repr(source[:200]))]
    try:
        tree = ast.parse(source)
    except SyntaxError as err:
        return [("module: does not parse", f"{err.msg} at line {err.lineno}")]
    problems: list[tuple[str, str]] = []
    body = tree.body
    docstring = (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )
    if not docstring:
        problems.append(("module: no module docstring first", ""))
    else:
        header = source.splitlines()[: body[0].lineno - 1]
        if not header or not all(line.startswith("#") for line in header) or len(header) > 5:
            problems.append(("module: header is not a few comment lines", repr(header[:8])))
    for node in body[1:] if docstring else body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top != "torch" and top not in sys.stdlib_module_names:
                    problems.append(("module: imports outside torch and the stdlib", alias.name))
        elif not isinstance(node, _ALLOWED_TOP_LEVEL):
            problems.append(("module: unexpected top-level statement", ast.unparse(node)[:200]))
    return problems


def judge(
    result: dict[str, Any],
    given: str,
    example_dir: Path,
    out_dir: Path,
    before: list[str] | None = None,
) -> Verdict:
    """The contract applied to one worker result of ``build`` (then ``check``, import, probe).

    `given` is the spec path as the command line had it; `before` lists what `example_dir`
    (the build's working directory, holding `out_dir`) held before, which must be all that
    is there afterwards besides the module.
    """
    verdict = Verdict()
    if "timeout" in result:
        place = _stack_place(result.get("stack", ""))
        verdict.fail(
            f"timeout in {result['timeout']}{place}",
            f"over {result['seconds']} s; stack:\n{result.get('stack', '')[-1500:]}",
        )
        return verdict
    if "died" in result:
        verdict.fail(f"worker died in {result['died']}", f"status {result['status']}")
        return verdict
    build = result["runs"][0]
    written = _snapshot(str(out_dir)) if out_dir.exists() else []
    if build["exception"] is not None:
        exc = build["exception"]
        verdict.traceback = exc["traceback"]
        verdict.fail(exception_signature("build", exc), exc["traceback"][-1500:])
        if written:
            verdict.fail("after a traceback: files left in DIR", repr(written))
        return verdict
    rc = verdict.rc = build["rc"]
    if rc == 2:
        for signature, detail in message_problems(build["stderr"], given, result.get("document")):
            verdict.fail(signature, detail)
        if written:
            verdict.fail("exit 2: files written", repr(written))
        return verdict
    if rc != 0:
        verdict.fail(f"build: exit status {rc}", repr(build["stderr"][:300]))
        return verdict
    modules = [p for p in written if p.endswith(".py")]
    if len(written) != 1 or len(modules) != 1:
        verdict.fail("exit 0: not exactly one module written", repr(written))
        return verdict
    for signature, detail in module_problems((out_dir / modules[0]).read_bytes()):
        verdict.fail(signature, detail)
    out_rel = os.path.relpath(out_dir, example_dir)
    expected = {out_rel, os.path.join(out_rel, modules[0]), *(before or [])}
    others = sorted(set(_snapshot(str(example_dir))) - expected)
    if others:
        verdict.fail("exit 0: files written outside the module", repr(others))
    if len(result["runs"]) > 1:
        check = result["runs"][1]
        if check["exception"] is not None:
            exc = check["exception"]
            verdict.fail(exception_signature("check", exc), exc["traceback"][-1500:])
        elif check["rc"] != 0:
            verdict.fail("check: a fresh build is reported stale", repr(check["stderr"][:300]))
    imported = result.get("import")
    if imported is None:
        return verdict
    if imported["exception"] is not None:
        exc = imported["exception"]
        verdict.fail(exception_signature("import", exc), exc["traceback"][-1500:])
        return verdict
    if imported["sentinel"]:
        verdict.fail("import: ran injected code", "builtins.FOLDGEN_PWNED was set")
    if imported["output"]:
        verdict.fail("import: printed output", repr(imported["output"][:300]))
    if imported["new_files"]:
        verdict.fail("import: wrote files", repr(imported["new_files"][:10]))
    probed = result.get("probe")
    if probed is None or probed["skipped"]:
        return verdict
    verdict.probed = True
    if probed["exception"] is not None:
        exc = probed["exception"]
        verdict.probe_crashed = True
        verdict.fail(exception_signature("probe", exc), exc["traceback"][-1500:])
        return verdict
    elements, converged, finite = probed["outcome"]
    if not finite and converged == elements:
        verdict.fail(
            "probe: non-finite result reported converged",
            f"{converged}/{elements} converged, non-finite",
        )
    return verdict


def contract(
    worker: Worker,
    spec: str | Path,
    out_dir: Path,
    *,
    timeout: float,
    settings: dict[str, Any] | None = None,
    cwd: Path | None = None,
) -> tuple[Verdict, dict[str, Any]]:
    """Run build, check, import and probe of one spec and judge them.

    `spec` is passed to the command line as given (relative to `cwd`, by default the parent
    of `out_dir`, which must hold nothing else that the build may touch).
    """
    where = cwd or out_dir.parent
    before = _snapshot(str(where))
    given, out = str(spec), str(out_dir)
    request = {
        "commands": [["build", given, "-o", out], ["check", given, "-o", out]],
        "spec": given,
        "out": out,
        "watch": str(where),
        "load": True,
        "probe": True,
        "settings": settings or {},
        "cwd": str(where),
    }
    result = worker.run(request, timeout)
    return judge(result, given, where, out_dir, before), result


def cli(
    worker: Worker, argv: list[str], cwd: Path, *, umask: int = 0o022, timeout: float = 60.0
) -> dict[str, Any]:
    """One ``foldgen`` command in the worker: rc, stdout, stderr, exception (or a timeout)."""
    result = worker.run({"commands": [argv], "cwd": str(cwd), "umask": umask}, timeout)
    return result["runs"][0] if "runs" in result else result


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _serve()
    else:
        sys.exit("usage: python tests/contract.py --worker (started by the tests)")
