"""Long local fuzzing runs of ``foldgen build`` (issue 8), with counts and distinct findings.

    python tests/fuzz_long.py --examples 10000                 # counts only
    python tests/fuzz_long.py --seconds 1200 --findings DIR    # and one minimised YAML per cause

It draws specs from tests/fuzz_strategies.py (half from the grammar, half mutated), runs
each through the contract of tests/contract.py in one worker subprocess, and never stops at
a failure: it prints how many specs it built, how many exited 0 and 2, how many raised a
traceback, how many generated layers it called and how many of those calls crashed, and
every distinct failure (an exception's type and innermost foldgen frame, or the shape of a
broken message). With ``--findings`` each cause's smallest example is minimised line by line
and token by token and written as NN_slug.yaml with an index.md. Use one core
(``taskset -c 1``) on a shared machine; the pytest equivalent is HYPOTHESIS_PROFILE=long.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from contract import Verdict, Worker, contract  # noqa: E402
from fuzz_strategies import mutated_specs, valid_specs  # noqa: E402
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

TIMEOUT = 10.0
FAST = {"max_iter": 50, "backward_max_iter": 50}

COMPONENTS = {
    "loading, validation, names, doc text (spec.py, cli.py, emit.py)": (
        "spec.py", "cli.py", "emit.py", "build.py", "naming.py", "limits.py", "errors.py",
        "message:", "exit 2:", "exit 0:", "module:", "import:", "check:",
    ),
    "expressions, derivation (parse.py, expr.py, derive.py, printer.py, ir.py)": (
        "parse.py", "expr.py", "derive.py", "printer.py", "ir.py", "functions.py",
        "mathprint.py", "rules/",
    ),
    "runtime of the generated module (templates)": ("<generated>", "templates/", "probe:"),
}  # fmt: skip


def component(signature: str) -> str:
    """Which part of foldgen a failure signature points at."""
    place = signature.split(" at ", 1)[-1] if " at " in signature else signature
    place = place.split(" in ", 1)[-1] if " in " in place else place
    for name, marks in COMPONENTS.items():
        if any(mark in place for mark in marks):
            return name
    return "unknown (see the reproducer)"


def refine(signature: str, detail: str) -> str:
    """A signature split by the shape of the message where one check has several causes."""
    if not signature.startswith("message:") or '"error: ' not in detail:
        return signature
    text = detail.split('"error: ', 1)[1]
    text = re.sub(r"^.*?spec\.yaml:?(\d+:\d+: )?", "", text)
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", text)
    return f"{signature} | {' '.join(text.split()[:7])}"


@dataclass
class Finding:
    """A distinct failure: how often it was seen, and its smallest example."""

    signature: str
    component: str
    count: int = 0
    example: bytes = b""
    detail: str = ""
    kinds: Counter = field(default_factory=Counter)


@dataclass
class Run:
    """Counts over a whole run, and the findings."""

    counts: Counter = field(default_factory=Counter)
    findings: dict[str, Finding] = field(default_factory=dict)

    def record(self, kind: str, raw: bytes, verdict: Verdict, result: dict) -> None:
        c = self.counts
        c["specs"] += 1
        c[f"specs ({kind})"] += 1
        runs = result.get("runs") or []
        if runs:
            c["builds"] += 1
        if "timeout" in result:
            c["timeouts"] += 1
        if "died" in result:
            c["worker deaths"] += 1
        if verdict.rc == 0:
            c["exit 0"] += 1
        elif verdict.rc == 2:
            c["exit 2"] += 1
        elif runs and runs[0]["exception"] is not None:
            c["tracebacks (build)"] += 1
        elif runs:
            c[f"exit {verdict.rc}"] += 1
        if verdict.probed:
            c["runtime calls"] += 1
        if verdict.probe_crashed:
            c["runtime crashes"] += 1
        if verdict.violations:
            c["specs breaking the contract"] += 1
        for signature, detail in verdict.violations:
            key = refine(signature, detail)
            finding = self.findings.setdefault(key, Finding(key, component(key)))
            finding.count += 1
            finding.kinds[kind] += 1
            if not finding.example or len(raw) < len(finding.example):
                finding.example, finding.detail = raw, detail


class _TimeUp(Exception):
    pass


def fuzz(worker: Worker, examples: int, seconds: float, kinds: str, run: Run, rng: int) -> None:
    """Draw and check specs until the example budget or the time is spent."""
    choices = []
    if kinds in ("both", "valid"):
        choices.append(st.tuples(st.just("valid"), valid_specs()))
    if kinds in ("both", "mutated"):
        choices.append(st.tuples(st.just("mutated"), mutated_specs()))
    stop = time.monotonic() + seconds
    last_report = time.monotonic()

    @seed(rng)
    @settings(
        max_examples=examples,
        phases=[Phase.generate],
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(choices))
    def one(drawn: tuple[str, bytes]) -> None:
        nonlocal last_report
        if time.monotonic() > stop:
            raise _TimeUp
        kind, raw = drawn
        verdict, result = check(worker, raw)
        run.record(kind, raw, verdict, result)
        if time.monotonic() - last_report > 60:
            last_report = time.monotonic()
            print(summary_line(run), file=sys.stderr, flush=True)

    try:
        one()
    except _TimeUp:
        pass


def check(worker: Worker, raw: bytes) -> tuple[Verdict, dict]:
    with tempfile.TemporaryDirectory(prefix="foldgen-fuzz-") as scratch:
        example = Path(scratch)
        spec = example / "spec.yaml"
        spec.write_bytes(raw)
        return contract(worker, spec, example / "out", timeout=TIMEOUT, settings=FAST)


def summary_line(run: Run) -> str:
    c = run.counts
    keys = ["specs", "exit 0", "exit 2", "tracebacks (build)", "timeouts", "runtime calls"]
    return ", ".join(f"{k}: {c[k]}" for k in keys) + f", distinct failures: {len(run.findings)}"


def still_fails(worker: Worker, raw: bytes, signature: str) -> bool:
    verdict, _ = check(worker, raw)
    return any(refine(sig, detail) == signature for sig, detail in verdict.violations)


def minimise(worker: Worker, raw: bytes, signature: str, budget: float) -> bytes:
    """Delete lines, then tokens of lines, while the same failure remains (greedy ddmin)."""
    stop = time.monotonic() + budget
    lines = raw.split(b"\n")
    chunk = max(len(lines) // 2, 1)
    while chunk >= 1 and time.monotonic() < stop:
        i, changed = 0, False
        while i < len(lines) and time.monotonic() < stop:
            candidate = lines[:i] + lines[i + chunk :]
            if candidate and still_fails(worker, b"\n".join(candidate), signature):
                lines, changed = candidate, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    for n in range(len(lines)):
        tokens = re.split(rb"(\s+)", lines[n])
        j = 0
        while j < len(tokens) and time.monotonic() < stop:
            if not tokens[j].strip():
                j += 1
                continue
            candidate = tokens[:j] + tokens[j + 1 :]
            trial = lines[:n] + [b"".join(candidate)] + lines[n + 1 :]
            if still_fails(worker, b"\n".join(trial), signature):
                tokens = candidate
                lines = trial
            else:
                j += 1
    return b"\n".join(lines)


def slug(signature: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", signature.lower()).strip("_")[:60]


def write_findings(worker: Worker, run: Run, directory: Path, budget: float) -> None:
    """One minimised reproducer per finding and an index; the unminimised ones in raw/."""
    (directory / "raw").mkdir(parents=True, exist_ok=True)
    ordered = sorted(run.findings.values(), key=lambda f: (f.component, -f.count))
    for number, finding in enumerate(ordered, 1):
        name = f"{number:02d}_{slug(finding.signature)}.yaml"
        (directory / "raw" / name).write_bytes(finding.example)
    rows = []
    for number, finding in enumerate(ordered, 1):
        small = minimise(worker, finding.example, finding.signature, budget)
        name = f"{number:02d}_{slug(finding.signature)}.yaml"
        (directory / name).write_bytes(small)
        verdict, _ = check(worker, small)
        detail = next(
            (d for s, d in verdict.violations if refine(s, d) == finding.signature),
            finding.detail,
        )
        rows.append((number, name, finding, detail))
        print(f"minimised {name}: {len(finding.example)} -> {len(small)} bytes", file=sys.stderr)
    lines = ["# Distinct failures found by tests/fuzz_long.py", ""]
    lines += [f"Counts: {', '.join(f'{k}: {v}' for k, v in sorted(run.counts.items()))}", ""]
    for number, name, finding, detail in rows:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(finding.kinds.items()))
        lines += [
            f"## {number}. {finding.signature}",
            "",
            f"- reproducer: `{name}` (`foldgen build {name} -o /tmp/out`)",
            f"- component: {finding.component}",
            f"- seen: {finding.count} times ({kinds})",
            "",
            "```",
            detail[-1200:].rstrip(),
            "```",
            "",
        ]
    (directory / "index.md").write_text("\n".join(lines), encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=float("inf"))
    parser.add_argument("--kind", choices=["both", "valid", "mutated"], default="both")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--findings", type=Path, help="write minimised reproducers here")
    parser.add_argument("--minimise-seconds", type=float, default=60.0)
    args = parser.parse_args()
    worker = Worker()
    run = Run()
    start = time.monotonic()
    try:
        fuzz(worker, args.examples, args.seconds, args.kind, run, args.seed)
        elapsed = time.monotonic() - start
        print(f"\n{summary_line(run)} in {elapsed:.0f} s (worker starts: {worker.starts})")
        for key, value in sorted(run.counts.items()):
            print(f"  {key}: {value}")
        print("distinct failures:")
        for finding in sorted(run.findings.values(), key=lambda f: -f.count):
            print(f"  {finding.count:6d}  {finding.signature}")
        if args.findings:
            write_findings(worker, run, args.findings, args.minimise_seconds)
    finally:
        worker.close()
    return 1 if run.findings else 0


if __name__ == "__main__":
    sys.exit(main())
