"""The batch-aware torch printer: each rule's text and numbers, batching and broadcasting,
common-subexpression elimination, determinism, line length and dtype."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from ir_helpers import (
    assert_close,
    compile_function,
    compile_source,
    leaf,
    random_data,
    scope,
    source_of,
)

from foldgen import expr as E
from foldgen.derive import gradient, vjp
from foldgen.parse import parse_expression
from foldgen.source import number

DIMS = {"n": 4, "m": 3}
N, M = DIMS["n"], DIMS["m"]
x = leaf("x", ("n",), "var")
c = leaf("c", ("n",))
w = leaf("w", ("m",))
A = leaf("A", ("m", "n"))
B = leaf("B", ("n", "n"))
Q = leaf("Q", ("n", "n"), props={"symmetric"})
s = leaf("s")
LEAVES = [x, c, w, A, B, Q, s]
SCOPE = scope(LEAVES, DIMS)
ROOT = Path(__file__).resolve().parent.parent


def parse(text):
    return parse_expression(text, SCOPE)


def returned(source: str) -> str:
    """The text after ``return`` (the function's single result)."""
    last = source.rstrip("\n").splitlines()[-1].strip()
    assert last.startswith("return ")
    return last[len("return ") :]


def dg(v):
    return torch.diag_embed(v)


def mv(a, v):
    return torch.einsum("...ij,...j->...i", a, v)


# Each print rule: the spec expression, the exact text it prints as, and an independent value.
RULES = [
    ("c + x", "c + x", lambda d: d["c"] + d["x"]),
    ("x - c", "x - c", lambda d: d["x"] - d["c"]),
    ("c * x", "c * x", lambda d: d["c"] * d["x"]),
    ("x / c", "x / c", lambda d: d["x"] / d["c"]),
    ("2 / x", "2.0 / x", lambda d: 2 / d["x"]),
    ("c - 2 / x", "c - 2.0 / x", lambda d: d["c"] - 2 / d["x"]),
    ("-1 / x", "-1.0 / x", lambda d: -1 / d["x"]),
    ("(c - x) / (x + 2)", "(c - x) / (x + 2.0)", lambda d: (d["c"] - d["x"]) / (d["x"] + 2)),
    ("x * (c + x)", "x * (c + x)", lambda d: d["x"] * (d["c"] + d["x"])),
    ("x - (c + w @ A)", "x - c - _mv(A.mT, w)", lambda d: d["x"] - d["c"] - mv(d["A"].mT, d["w"])),
    ("s * (x - c)", "s[..., None] * (x - c)", lambda d: d["s"][..., None] * (d["x"] - d["c"])),
    ("x / (c * x)", "x / (c * x)", lambda d: d["x"] / (d["c"] * d["x"])),
    ("-x", "-x", lambda d: -d["x"]),
    ("-(x + c) ** 2", "-torch.square(x + c)", lambda d: -((d["x"] + d["c"]) ** 2)),
    ("s * x", "s[..., None] * x", lambda d: d["s"][..., None] * d["x"]),
    ("s + B", "s[..., None, None] + B", lambda d: d["s"][..., None, None] + d["B"]),
    ("x / s", "x / s[..., None]", lambda d: d["x"] / d["s"][..., None]),
    ("s * eye(n)", None, lambda d: d["s"][..., None, None] * torch.eye(N, dtype=torch.float64)),
    ("x ** 2", "torch.square(x)", lambda d: d["x"] ** 2),
    ("x ** 0.5", "torch.sqrt(x)", lambda d: d["x"].sqrt()),
    ("x ** -0.5", "torch.rsqrt(x)", lambda d: d["x"].rsqrt()),
    ("x ** -1", "1.0 / x", lambda d: 1 / d["x"]),
    ("x ** 3", "torch.pow(x, 3.0)", lambda d: d["x"] ** 3),
    ("x ** s", "torch.pow(x, s[..., None])", lambda d: d["x"] ** d["s"][..., None]),
    ("2 ** s * x", None, lambda d: 2 ** d["s"][..., None] * d["x"]),
    (
        "(2 * ones(n)) ** s",
        "torch.pow(x.new_full((n,), 2.0), s[..., None])",
        lambda d: (2 ** d["s"][..., None]).expand(*d["s"].shape, N),
    ),
    ("A @ B", "A @ B", lambda d: d["A"] @ d["B"]),
    ("A @ x", "_mv(A, x)", lambda d: mv(d["A"], d["x"])),
    ("w @ A", "_mv(A.mT, w)", lambda d: mv(d["A"].mT, d["w"])),
    ("x @ Q", "_mv(Q, x)", lambda d: mv(d["Q"], d["x"])),
    ("x @ c", "_dot(x, c)", lambda d: (d["x"] * d["c"]).sum(-1)),
    ("A.T", "A.mT", lambda d: d["A"].mT),
    ("sum(A)", "A.sum((-2, -1))", lambda d: d["A"].sum((-2, -1))),
    ("sum(x)", "x.sum(-1)", lambda d: d["x"].sum(-1)),
    ("diag(x)", "torch.diag_embed(x)", lambda d: dg(d["x"])),
    ("diag(B)", "B.diagonal(0, -2, -1)", lambda d: d["B"].diagonal(0, -2, -1)),
    ("log_sum_exp(x)", "torch.logsumexp(x, -1)", lambda d: torch.logsumexp(d["x"], -1)),
    ("entr(x)", "torch.special.entr(x)", lambda d: torch.special.entr(d["x"])),
    (
        "softplus(x)",
        "torch.nn.functional.softplus(x)",
        lambda d: torch.nn.functional.softplus(d["x"]),
    ),
    ("sigmoid(x)", "torch.sigmoid(x)", lambda d: torch.sigmoid(d["x"])),
    ("eye(n)", None, lambda d: torch.eye(N, dtype=torch.float64)),
    ("ones(n)", "x.new_full((n,), 1.0)", lambda d: torch.ones(N, dtype=torch.float64)),
    ("s * ones(n)", "_expand(s, (n,))", lambda d: d["s"][..., None].expand(*d["s"].shape, N)),
    ("n * ones(m, n)", "x.new_full((m, n), n)", lambda d: torch.full((M, N), float(N))),
    ("s / n * x", None, lambda d: d["s"][..., None] / N * d["x"]),
    ("n ** 0.5 * x", "n ** 0.5 * x", lambda d: N**0.5 * d["x"]),
    ("sqrt(n) * x", None, lambda d: N**0.5 * d["x"]),
    (
        "log(m) + x",
        None,
        lambda d: torch.log(torch.tensor(float(M), dtype=torch.float64)) + d["x"],
    ),
    ("ones(m) @ A", None, lambda d: d["A"].sum(-2)),
    ("A @ ones(n)", None, lambda d: d["A"].sum(-1)),
    ("diag(ones(n)) @ B", None, lambda d: d["B"]),
    (
        "log_sum_exp(ones(n)) * x",
        None,
        lambda d: (torch.log(torch.tensor(float(N), dtype=torch.float64)) + 1) * d["x"],
    ),
]


@pytest.mark.parametrize("batch", [(), (2, 3)], ids=["unbatched", "batched"])
@pytest.mark.parametrize("text,printed,ref", RULES, ids=[r[0] for r in RULES])
def test_print_rule_text_and_numbers(text, printed, ref, batch):
    e = parse(text)
    source, fn = compile_function("f", LEAVES, [e])
    if printed is not None:
        assert returned(source) == printed, source
    data = random_data(LEAVES, DIMS, batch, seed=2, positive=("x", "s"))
    expected = ref(data)
    got = fn(*(data[lf.name] for lf in LEAVES))[0]
    core = tuple(N if d == "n" else M for d in e.shape)
    assert got.shape[len(got.shape) - len(core) :] == core
    assert_close(got, expected.expand(batch + core), what=text)


# --------------------------------------------------------------------------- batching

BATCH_OUTPUTS = [
    "sum(exp(A @ x)) + s * x @ Q @ x",
    "A.T @ exp(A @ x) + s * x",
    "diag(x) @ B + s * eye(n) + A.T @ A",
    "s ** 2 + log_sum_exp(x)",
]


def _batch_outputs():
    return [parse(t) for t in BATCH_OUTPUTS]


@pytest.mark.parametrize("batch", [(), (4,), (2, 3)], ids=["()", "(4,)", "(2,3)"])
def test_batched_shapes_and_values(batch):
    """Outputs have shape batch + core, and each batch element equals the unbatched call."""
    _, fn = compile_function("f", LEAVES, _batch_outputs())
    data = random_data(LEAVES, DIMS, batch, seed=4)
    got = fn(*(data[lf.name] for lf in LEAVES))
    cores = [(), (N,), (N, N), ()]
    assert [tuple(g.shape) for g in got] == [batch + core for core in cores]
    for idx in itertools.product(*(range(b) for b in batch)):
        one = fn(*(data[lf.name][idx] for lf in LEAVES))
        for i, (g, e) in enumerate(zip(got, one)):
            assert tuple(e.shape) == cores[i]
            assert_close(g[idx], e, rtol=1e-12, what=f"{BATCH_OUTPUTS[i]} at {idx}")


def test_mixed_batched_and_unbatched_inputs():
    """Q, A and w unbatched, x batched (5, n), s batched (5,), c broadcasting as (2, 1, n)."""
    outputs = _batch_outputs() + [parse("c + Q @ x"), parse("s * sum(c)")]
    _, fn = compile_function("f", LEAVES, outputs)
    gen = torch.Generator().manual_seed(5)

    def r(*shape):
        return torch.randn(shape, generator=gen, dtype=torch.float64)

    data = {"x": r(5, N), "c": r(2, 1, N), "w": r(M), "A": r(M, N), "B": r(N, N), "s": r(5)}
    q = r(N, N)
    data["Q"] = q + q.mT
    got = fn(*(data[lf.name] for lf in LEAVES))
    assert [tuple(g.shape) for g in got] == [(5,), (5, N), (5, N, N), (5,), (2, 5, N), (2, 5)]
    for i in range(5):
        one = {k: v for k, v in data.items()}
        one["x"], one["s"] = data["x"][i], data["s"][i]
        for j in range(2):
            one["c"] = data["c"][j, 0]
            ref = fn(*(one[lf.name] for lf in LEAVES))
            for k_, (g, e) in enumerate(zip(got, ref)):
                sel = g[j, i] if k_ >= 4 else g[i]
                assert_close(sel, e, what=f"output {k_} at ({j}, {i})")


def test_scalar_parameter_times_vector_indexes_with_none():
    source = source_of("f", [x, s], [parse("s * x")])
    assert returned(source) == "s[..., None] * x"
    source = source_of("f", [x, s, B], [parse("s * B + s")])
    assert "s[..., None, None] * B" in source


# --------------------------------------------------------------------------- CSE


def test_shared_subexpression_is_assigned_once():
    source = source_of("f", LEAVES, [parse("sum(exp(A @ x)) + w @ exp(A @ x)")])
    assert source.count("torch.exp(") == 1, source
    assert source.count("_mv(A, x)") == 1, source
    assert "    _t0 = " in source


def test_subexpression_shared_between_outputs_is_assigned_once():
    f = parse("sum(softplus(A @ x)) + s * sum(entr(x))")
    g = gradient(f, x)
    u = leaf("u", ("n",), "aux")
    hv = vjp([(g, u)], [x])[x]
    source = source_of("f", [*LEAVES, u], [f, g, hv])
    assert source.count("_mv(A, x)") == 1, source
    assert source.count("torch.sigmoid(") == 1, source
    assert source.count("torch.nn.functional.softplus(") == 1, source
    # Every temp is assigned once and used afterwards.
    lines = source.splitlines()
    temps = [ln.split("=")[0].strip() for ln in lines if ln.strip().startswith("_t")]
    assert len(temps) == len(set(temps))
    for t in temps:
        assert source.count(t) >= 2


def test_negated_shared_term_uses_its_temp():
    """A term -t that is shared (a temp) is added by name, not recomputed from t."""
    u = leaf("u", ("n",), "aux")
    f = parse("sum(tanh(x))")
    g = gradient(f, x)
    hv = vjp([(g, u)], [x])[x]
    source = source_of("f", [x, u], [g, hv])
    assert source.count("torch.square(") == 1, source


# --------------------------------------------------------------------------- determinism

DETERMINISM_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from foldgen.derive import gradient, vjp
    from foldgen.parse import parse_expression
    from ir_helpers import leaf, scope, source_of

    x = leaf("x", ("n",), "var")
    u = leaf("u", ("n",), "aux")
    leaves = [x, u, leaf("c", ("n",)), leaf("A", ("m", "n")), leaf("w", ("m",)),
              leaf("Q", ("n", "n"), props={{"symmetric", "psd"}}), leaf("s"), leaf("k")]
    sc = scope(leaves, {{"n": 4, "m": 3}})
    for text in {texts!r}:
        f = parse_expression(text, sc)
        g = gradient(f, x)
        hv = vjp([(g, u)], [x, *leaves[2:]])
        print(source_of("f", leaves, [f, g, *hv.values()]))
    """
)
DETERMINISM_TEXTS = [
    "0.5 * x @ Q @ x + c @ x",
    "sum(softplus(A @ x)) - w @ (A @ x) + s * sum_squares(x)",
    "c @ x + s * sum(entr(x)) + s / n * log_sum_exp(x) + norm2(A @ x - w) + norm1(x)",
    "sum(exp(A @ diag(x)) * A) + sum(sigmoid(x) * tanh(x) * sin(x) * cos(x) * sqrt(abs(x)))",
]


def test_output_is_deterministic_in_process():
    f = parse(DETERMINISM_TEXTS[2])
    g = gradient(f, x)
    first = source_of("f", LEAVES, [f, g])
    second = source_of("f", LEAVES, [parse(DETERMINISM_TEXTS[2]), gradient(f, x)])
    assert first == second


def test_output_is_identical_under_different_hash_seeds():
    script = DETERMINISM_SCRIPT.format(tests=str(ROOT / "tests"), texts=DETERMINISM_TEXTS)
    outputs = []
    for seed in ("1", "2", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        result = subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0].count("def f(") == len(DETERMINISM_TEXTS)
    assert outputs[0] == outputs[1] == outputs[2]


# --------------------------------------------------------------------------- layout and dtype


def test_long_expressions_stay_within_99_columns():
    weights = leaf("regression_weights", ("m", "n"))
    targets = leaf("regression_targets", ("m",))
    temperature = leaf("temperature_parameter")
    variable = leaf("decision_variable", ("n",), "var")
    direction = leaf("direction", ("n",), "aux")
    leaves = [variable, weights, targets, temperature, direction]
    sc = scope(leaves, DIMS)
    text = (
        "sum(softplus(regression_weights @ decision_variable - regression_targets))"
        " + temperature_parameter * sum(entr(decision_variable))"
        " + sum(exp(decision_variable)) + sum(sin(decision_variable))"
        " + sum(cos(decision_variable)) + sum(tanh(decision_variable))"
        " + sum(sigmoid(decision_variable)) + temperature_parameter * temperature_parameter"
        " * log_sum_exp(regression_weights.T @ regression_targets * decision_variable)"
    )
    f = parse_expression(text, sc)
    g = gradient(f, variable)
    hv = vjp([(g, direction)], [variable, weights, temperature])
    outputs = [f, g, *hv.values()]
    source, fn = compile_function("f", leaves, outputs)
    too_long = [ln for ln in source.splitlines() if len(ln) > 99]
    assert not too_long, "\n".join(too_long)
    # Splitting lines changes nothing numerically: compare with autograd.
    data = random_data(leaves, DIMS, (3,), seed=6, positive=("decision_variable",))
    for name in ("decision_variable", "regression_weights", "temperature_parameter"):
        data[name].requires_grad_(True)
    args = [data[lf.name] for lf in leaves]
    got = fn(*args)
    (g_ref,) = torch.autograd.grad(got[0].sum(), [args[0]], create_graph=True)
    hv_ref = torch.autograd.grad(g_ref, [args[0], args[1], args[3]], grad_outputs=args[4])
    assert_close(got[1].detach(), g_ref.detach(), what="gradient")
    for a, b in zip(got[2:], hv_ref):
        assert_close(a.detach(), b.detach(), what="hvp")


def test_float32_inputs_stay_float32():
    outputs = [
        parse("s / n * sum(x) + log_sum_exp(x) + sqrt(m) + sum(eye(n) @ x) + 0.1"),
        parse("s * eye(n) + diag(ones(n)) + B / 3"),
        parse("ones(n) * 2.5 + log(n)"),
        parse("A @ ones(n)"),
        gradient(parse("sum(x) * 0.3 + s * n"), x),
        gradient(parse("sum(x) * 0.3 + s * n"), s),
        parse("n * m * 0.5"),
    ]
    source, fn = compile_function("f", LEAVES, outputs)
    assert "float64" not in source and "double" not in source
    assert "torch.tensor(" not in source
    data = random_data(LEAVES, DIMS, (2,), seed=8, positive=("x",), dtype=torch.float32)
    got = fn(*(data[lf.name] for lf in LEAVES))
    for g in got:
        assert g.dtype == torch.float32
    data64 = {k_: v.double() for k_, v in data.items()}
    for a, b in zip(got, fn(*(data64[lf.name] for lf in LEAVES))):
        assert b.dtype == torch.float64
        torch.testing.assert_close(a.double().expand(b.shape), b, rtol=1e-5, atol=1e-5)


def test_number_literals_round_trip():
    for v in (0.5, 2.0, 1e-08, -3.0, 0.1, 1 / 3, 1e20, 123456.0):
        assert float(eval(number(v))) == v  # a float literal
    assert number(2.0) == "2.0" and number(0.5) == "0.5" and number(1e-8) == "1e-08"
    for bad in (float("inf"), -float("inf"), float("nan")):
        with pytest.raises(ValueError, match="not a finite number"):
            number(bad)


def test_a_rules_infinite_bound_prints_as_math_inf():
    """±∞ reaches the printer only as a rule's absent bound; it is spelled math.inf."""
    lo, hi = E.const(-float("inf"), ("n",)), E.const(float("inf"), ("n",))
    source, fn = compile_function("f", LEAVES, [lo, hi])
    assert "-math.inf" in source
    data = random_data(LEAVES, {"n": 3, "m": 2}, (), seed=0)
    got_lo, got_hi = fn(*(data[lf.name] for lf in LEAVES))
    assert got_lo.shape == (3,) and bool((got_lo == -float("inf")).all())
    assert bool((got_hi == float("inf")).all())


def test_sizes_come_from_inputs_not_literals():
    """The same function is printed for any size, and runs at any size."""
    source, fn = compile_function("f", LEAVES, [parse("s / n * ones(n) + A.T @ w / m")])
    assert "4" not in source and "3" not in source
    for n_, m_ in ((2, 5), (7, 1)):
        data = random_data(LEAVES, {"n": n_, "m": m_}, (), seed=1)
        got = fn(*(data[lf.name] for lf in LEAVES))[0]
        expected = data["s"] / n_ + data["A"].mT @ data["w"] / m_
        assert_close(got, expected, what=f"n={n_}, m={m_}")


def test_docstring_and_single_versus_tuple_return():
    one = source_of("f", [x, c], [parse("x + c")])
    assert one.splitlines()[:2] == ["def f(x, c):", '    """test"""']
    assert returned(one) == "x + c"
    two = source_of("g", [x, c], [parse("x + c"), parse("x * c")])
    assert returned(two) == "x + c, x * c"
    assert compile_source(two, "g")(torch.ones(N), torch.ones(N))[1].shape == (N,)


def test_zero_and_constant_outputs_are_tensors():
    _, fn = compile_function("f", [x, A], [E.zero(("m", "n")), E.const(2.0, ("n",)), E.const(1.0)])
    xv, av = torch.randn(3, N, dtype=torch.float64), torch.randn(M, N, dtype=torch.float64)
    zero, two, one = fn(xv, av)
    assert isinstance(zero, torch.Tensor) and zero.shape[-2:] == (M, N) and not zero.any()
    assert two.shape[-1:] == (N,) and bool((two == 2).all())
    assert one.dim() == 0 or one.shape == (3,)
    assert float(one.reshape(-1)[0]) == 1.0


def test_concatenated_constant_blocks_stay_within_99_columns():
    """A stack of constant blocks (the gradient of an objective that ignores some variables,
    as the AC-OPF cost ignores the voltages) prints each block once, bound to a temp."""
    dims = {"number_of_buses": 4, "number_of_generators": 3}
    variable = leaf("generation", ("number_of_generators",), "var")
    loads = leaf("loads", ("number_of_buses",))
    sc = scope([variable, loads], dims)
    text = (
        "hstack([ones(number_of_buses), loads, ones(number_of_buses), generation,"
        " ones(number_of_generators)])"
    )
    e = parse_expression(text, sc)
    source, fn = compile_function("f", [variable, loads], [e])
    too_long = [ln for ln in source.splitlines() if len(ln) > 99]
    assert not too_long, "\n".join(too_long)
    assert source.count("new_full((number_of_buses,)") == 1
    x = torch.arange(3.0, dtype=torch.float64)
    y = -torch.arange(4.0, dtype=torch.float64)
    (got,) = fn(x, y)
    torch.testing.assert_close(
        got,
        torch.cat(
            [
                torch.ones(4, dtype=torch.float64),
                y,
                torch.ones(4, dtype=torch.float64),
                x,
                torch.ones(3, dtype=torch.float64),
            ]
        ),
    )
