"""Expressions are untrusted input: bounded cost, and one located message for every bad one.

Two halves. The *ladders* build specs whose expressions grow (products of k factors, k-deep
nestings of exp and sin, products of k distinct sines) and record the cost as counts, not
times: the Python calls a build makes (the work: a tree walk of a DAG, a recursive shape or
equality shows here), the derived DAG's size and the length of the module it writes. Before
hash-consing the calls grew by about 2^k (product of 10 factors: 0.45 M calls, 14: 8.6 M);
the tests assert polynomial growth.
The *limits* half checks the exact key and message of each class of bad expression:
too long, too deep, too many digits, too large a size, a constant that is not finite, a
derivation past its node budget.
"""

from __future__ import annotations

import cProfile
import gc

import pytest
from ir_helpers import leaf, scope

from foldgen import expr as E
from foldgen.build import plan as locate_plan
from foldgen.derive import gradient, vjp
from foldgen.emit import render
from foldgen.errors import SpecError
from foldgen.ir import General, lower
from foldgen.limits import Limits
from foldgen.mathprint import math_str
from foldgen.parse import ExprError, Scope, parse_constraint, parse_expression
from foldgen.spec import load_spec_text

FILE = "probe.yaml"


def spec_text(
    objective: str,
    *,
    init: str = "zeros",
    constraints: tuple[str, ...] = ("0 <= x <= 1",),
    rule: str = "pgd",
) -> str:
    """A one-variable spec (x in R^n; parameters c, a and the scalar s) around an objective."""
    cons = "".join(f'\n  - "{c}"' for c in constraints)
    return (
        "foldgen: 1\n"
        "name: probe\n"
        "dims: {n: 5}\n"
        "parameters:\n"
        "  c: {shape: [n]}\n"
        "  a: {shape: [n]}\n"
        "  s: {shape: [], grad: false, default: 2.0}\n"
        "variables:\n"
        f'  x: {{shape: [n], init: "{init}"}}\n'
        f'minimize: "{objective}"\n'
        f"constraints:{cons if cons else ' []'}\n"
        f"solver: {{rule: {rule}}}\n"
    )


def build(text: str, limits: Limits | None = None) -> tuple[int, int, str]:
    """(size of the derived DAG, nodes the build created, module source) for a spec text.

    The DAG's size (distinct nodes of every printed function's outputs) does not depend on
    what else is alive; the count of created nodes can be lower when an earlier test's
    nodes are still alive (interning reuses them), never higher."""
    loaded = load_spec_text(text, FILE, **({"limits": limits} if limits else {}))
    problem = lower(loaded)
    plan = locate_plan(loaded, problem)  # a rule's RuleError located, as build does
    outputs = [e for fn in plan.functions for e in fn.outputs]
    return len(E.postorder(outputs)), problem.budget.used, render(problem, plan, FILE)


def spec_error(text: str, limits: Limits | None = None) -> SpecError:
    with pytest.raises(SpecError) as caught:
        build(text, limits)
    return caught.value


# --------------------------------------------------------------------------- ladders


def product(k: int) -> str:
    return "sum(" + " * ".join(["x"] * k) + ") + c @ x"


def tower(fn: str, k: int) -> str:
    """fn(fn(…fn(x)…)), k calls."""
    return f"{fn}(" * k + "x" + ")" * k


def nested(fn: str, k: int) -> str:
    return f"sum({tower(fn, k)}) + c @ x"


def sine_product(k: int) -> str:
    return "sum(" + " * ".join(f"sin({i} * x)" for i in range(1, k + 1)) + ") + c @ x"


LADDERS = {
    "product of k factors x": (product, (10, 20, 40, 80, 200)),
    "k nested exp": (lambda k: nested("exp", k), (10, 20, 50)),
    "k nested sin": (lambda k: nested("sin", k), (10, 20, 50)),
    "product of k sines sin(i x)": (sine_product, (10, 20, 40)),
}


def counted_build(text: str) -> tuple[int, int, int]:
    """(Python calls made, derived DAG size, module length) of one build."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        nodes, _, source = build(text)
    finally:
        profile.disable()
    return sum(entry.callcount for entry in profile.getstats()), nodes, len(source)


@pytest.mark.parametrize("name", LADDERS)
def test_build_cost_grows_polynomially(name):
    """Each step of the ladder multiplies k by r ≤ 2.5; the calls, the DAG and the module's
    length may grow by at most r² (quadratic), where the calls used to grow by ~2^(Δk)."""
    make, sizes = LADDERS[name]
    build(spec_text(make(sizes[0])))  # once-per-process caches (templates, sympy) first
    costs = [(k, *counted_build(spec_text(make(k)))) for k in sizes]
    for (k1, *small), (k2, *large) in zip(costs, costs[1:]):
        bound = (k2 / k1) ** 2
        for what, a, b in zip(("calls", "DAG nodes", "source length"), small, large):
            assert b / a <= bound, f"{name}: {what} grew by {b / a:.1f} from k={k1} to {k2}"
    k, calls, nodes, _ = costs[-1]
    assert nodes <= 100 * k and calls <= 20_000 * k, f"{name}: {costs} (linear is expected)"


def test_a_derived_dag_is_small_where_its_text_is_not():
    """Interned nodes share: sin(sin(x)) holds the node sin(x) itself. The Hessian product of
    sin nested k deep is a DAG of O(k) nodes whose text has O(k³) characters; the text is
    measured on the DAG and shown cut, never built in full."""
    x, u = leaf("x", ("n",), "var"), leaf("u", ("n",), "aux")
    sc = scope([x], {"n": 5})
    assert parse_expression("sin(sin(x))", sc).a is parse_expression("sin(x)", sc)

    def hvp(k: int) -> E.Expr:
        return vjp([(gradient(parse_expression(f"sum({tower('sin', k)})", sc), x), u)], [x])[x]

    short, long = hvp(10), hvp(40)
    full = math_str(short, limit=10**6)
    shown = math_str(long)
    total = int(shown.rsplit("(cut: ", 1)[1].split()[0].replace(",", ""))
    assert math_str(short).endswith(f"(cut: {len(full):,} characters in all)")
    assert len(shown) < 700 and total > 40 * len(full)  # ~ (40/10)³ = 64
    assert len(E.postorder([long])) < 5 * len(E.postorder([short]))  # ~ 40/10 = 4


def test_a_long_formula_is_cut_after_its_first_characters():
    """The cut text is the full text's beginning (at a space) plus the full length."""
    x = leaf("x", ("n",), "var")
    e = gradient(parse_expression(f"sum({tower('sin', 15)})", scope([x], {})), x)
    full = math_str(e, limit=10**6)
    assert len(full) > 300 and "…" not in full
    cut = math_str(e, limit=200)
    head, note = cut.split(" … ")
    assert full.startswith(head) and 160 <= len(head) <= 200
    assert note == f"(cut: {len(full):,} characters in all)"
    assert math_str(e, limit=len(full)) == full


# --------------------------------------------------------------------------- the limits

X = leaf("x", ("n",), "var")
C = leaf("c", ("n",))
SC = scope([X, C], {"n": 5})


def limited(limits: Limits) -> Scope:
    return Scope(SC.dims, SC.leaves, limits)


def parse_error(text: str, limits: Limits | None = None) -> str:
    with pytest.raises(ExprError) as caught:
        parse_expression(text, SC if limits is None else limited(limits))
    return str(caught.value)


def test_expression_length_is_limited():
    text = "x" + " + x" * 3000  # 12 001 characters
    assert parse_error(text) == (
        "the expression has 12001 characters, more than expression_chars allows; "
        "raise it with --limit expression_chars=VALUE (now 10000)"
    )
    assert parse_error("x + x", Limits(expression_chars=4)).startswith(
        "the expression has 5 characters"
    )


def test_a_chain_of_one_operator_is_one_level_and_parses():
    """x * x * … * x (200 factors) and a 2000-term sum are not nesting; the visitor walks
    the chain without recursion."""
    chain = parse_expression(" * ".join(["x"] * 200), SC)
    assert isinstance(chain, E.Mul) and chain.b is X
    assert parse_expression("x" + " + x" * 2000, SC) is E.mul(E.const(2001.0), X)
    assert parse_expression("x - c + x - c", SC) is E.add(
        E.mul(E.const(2.0), X), E.mul(E.const(-2.0), C)
    )


@pytest.mark.parametrize(
    "text",
    [
        "-" * 3000 + "x",  # ast.parse: MemoryError / RecursionError
        "(" * 150 + "x" + ")" * 150,  # ast.parse: 'too many nested parentheses' past 200
        "c @ (" + "-" * 200 + "x)",
    ],
)
def test_nesting_is_limited_before_python_parses(text):
    assert parse_error(text) == (
        "the expression is nested more than 100 levels deep (expression_depth); "
        "raise it with --limit expression_depth=VALUE (now 100)"
    )


def test_nesting_of_calls_and_powers_is_counted_on_the_tree():
    assert parse_expression(tower("sin", 99), SC).shape == ("n",)
    assert parse_error(tower("sin", 101)).startswith("the expression is nested more than 100")
    message = parse_error("-sin(" * 60 + "x" + ")" * 60)  # 60 brackets, 121 levels
    assert message == (
        "the expression is nested 121 levels deep, more than 100 (expression_depth); "
        "raise it with --limit expression_depth=VALUE (now 100)"
    )
    assert "nested 151 levels deep" in parse_error("x" + " ** 2" * 150)
    deep = Limits(expression_depth=200)
    sc = limited(deep)
    assert parse_expression(tower("sin", 101), sc).shape == ("n",)


def test_pythons_own_parser_limits_are_one_message():
    """With the limits raised past what Python's parser takes, its failure is still one
    ExprError (no --limit lifts Python's stack, so the message says to split)."""
    loose = Limits(expression_depth=10**6, expression_chars=10**6)
    for text in ("-" * 20000 + "x", "x" + " + x" * 6000, "x" + " ** x" * 4000):
        message = parse_error(text, loose)
        assert message.startswith("the expression is nested too deeply"), message
        assert "split it into smaller parts" in message


def test_integer_digits_are_limited():
    assert parse_error("9" * 101 + " * x") == (
        "the integer 99999999999999999999999… has more than 100 digits (number_digits); "
        "raise it with --limit number_digits=VALUE (now 100)"
    )
    assert "0xfffff" in parse_error("0x" + "f" * 400 + " * x")  # hex: same bound on the value
    assert parse_error("9" * 5000 + " * x").startswith("the integer 999")  # Python: 4300 max
    assert parse_expression("9" * 100 + " * x", SC) is E.mul(E.const(float("9" * 100)), X)
    wider = limited(Limits(number_digits=200))
    assert parse_expression("1" + "0" * 150 + " * x", wider) is E.mul(E.const(1e150), X)


def test_sizes_of_ones_and_eye_are_limited():
    assert parse_error("sum(ones(10000000000)) * x") == (
        "ones() of a size larger than dim_size allows; "
        "raise it with --limit dim_size=VALUE (now 1000000000)"
    )
    assert "eye() of a size" in parse_error("sum(eye(2000000000) @ x)")
    assert parse_expression("sum(ones(7)) * x", SC) is E.mul(E.const(7.0), X)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1e309 * x", "the number 1e309 is beyond the floating-point range (about 1.8e308)"),
        ("0 * 1e309 * x", "the number 1e309 is beyond the floating-point range"),
        ("(1e309 - 1e309) * x", "the number 1e309 is beyond the floating-point range"),
        ("1" + "0" * 400 + ".0 * x", "is beyond the floating-point range"),
        (
            "1e300 * 1e300 * x",
            "in '1e300 * 1e300': cannot evaluate the constant 1e+300 * 1e+300: "
            "not a finite number",
        ),
        ("1e308 + 1e308 + x", "cannot evaluate the constant 1e+308 + 1e+308: not a finite"),
        ("10 ** 400 * x", "in '10 ** 400': cannot evaluate the constant 10.0 ** 400.0"),
        ("2 ** 10000 * x", "cannot evaluate the constant 2.0 ** 10000.0: not a finite number"),
        ("x / 1e-320", "in 'x / 1e-320': cannot evaluate the constant 1 / 1e-320"),
        ("exp(1000) * x", "in 'exp(1000)': cannot evaluate the constant exp(1000.0): not a"),
        ("log(0) * x", "in 'log(0)': cannot evaluate the constant log(0.0): outside its domain"),
        ("0 ** -1 * x", "cannot evaluate the constant 0.0 ** -1.0: division by zero"),
        ("(x ** 1e200) ** 1e200", "cannot evaluate the constant 1e+200 * 1e+200"),
        ("inf * x", "'inf' is not a finite number; expressions take finite numbers"),
        ("nan + x", "'nan' is not a finite number"),
    ],
)
def test_constants_must_be_finite(text, message):
    assert message in parse_error(text)


def test_subnormal_constants_are_numbers():
    assert parse_expression("1e-320 * x", SC) is E.mul(E.const(1e-320), X)


def test_constant_folding_never_makes_nan_or_overflows_silently():
    """Straight at the constructors: finite operands give finite results or ConstantError;
    only a rule's ±∞ (absent bound) may stay infinite."""
    big = E.const(1e308)
    with pytest.raises(E.ConstantError):
        E.add(big, big)
    with pytest.raises(E.ConstantError):
        E.mul(big, E.const(10.0))
    with pytest.raises(E.ConstantError):
        E.const(float("nan"))
    with pytest.raises(E.ConstantError):
        E.const(10**400)
    inf = E.const(float("inf"), ("n",))
    assert E.mul(E.const(-1.0), inf) is E.const(-float("inf"), ("n",))
    with pytest.raises(E.ConstantError):
        E.add(E.const(float("inf")), E.const(-float("inf")))


# --------------------------------------------------------------------------- through a spec


def test_a_huge_exponent_is_reported_where_its_derivative_overflows():
    """x ** 1e300 is finite to parse; its second derivative's coefficient 1e300 (1e300 − 1)
    is not. The rule's derivation fails; the error is located at the expression whose own
    derivatives fail: the objective's key, or the constraint's. A rule that never builds the
    failing derivative is not stopped by it."""
    err = spec_error(spec_text("sum(x ** 1e300) + c @ x"))
    assert (err.key, err.line, err.col) == ("minimize", 10, 11)
    assert err.message == (
        "differentiating this expression: cannot evaluate the constant 1e+300 * 1e+300: "
        "not a finite number"
    )
    err = spec_error(
        spec_text("sum_squares(x)", constraints=("sum(x ** 1e300) <= 1",), rule="sqp")
    )
    assert err.key == "constraints[0]" and err.message.startswith("differentiating")
    err = spec_error(spec_text("sum_squares(x)", constraints=("sum(x ** 1e300) <= 1",)))
    assert err.key == "constraints[0]" and "rule 'pgd' needs a feasible set" in err.message
    source = build(spec_text("sum(x ** 1000000) + c @ x"))[2]  # large but finite
    assert "999999000000.0" in source


@pytest.mark.parametrize(
    ("init", "message"),
    [
        ("1e309", "the number 1e309 is beyond the floating-point range (about 1.8e308)"),
        ("1e309 - 1e309", "the number 1e309 is beyond the floating-point range"),
        ("inf", "'inf' is not a finite number; expressions take finite numbers"),
        ("nan", "'nan' is not a finite number; expressions take finite numbers"),
        ("-Infinity", "'Infinity' is not a finite number"),
    ],
)
def test_init_must_be_finite(init, message):
    err = spec_error(spec_text("sum_squares(x) + c @ x", init=init))
    assert err.key == "variables.x.init" and (err.line, err.col) == (9, 25)
    assert err.message.startswith(message)


def test_division_by_an_expression_zero_at_the_origin_is_a_general_constraint():
    """Classification substitutes x = 0 to find an affine offset; 1/(a·x) is not affine, and
    its value at 0 (a division by zero) must not stop the build."""
    loaded = load_spec_text(
        spec_text("sum_squares(x) + c @ x", constraints=("1 / (a @ x) <= s",), rule="sqp"),
        FILE,
    )
    problem = lower(loaded)
    assert len(problem.constraints) == 1 and isinstance(problem.constraints[0], General)
    source = build(
        spec_text("sum_squares(x) + c @ x", constraints=("1 / (a @ x) <= s",), rule="sqp")
    )[2]
    assert "    return 1.0 / _dot(a, x) - s\n" in source  # the block g(x) = 1/(a·x) − s
    for rule, message in (("pgd", "rule 'pgd' needs a feasible set"), ("admm", "rule 'admm'")):
        err = spec_error(spec_text("sum_squares(x)", constraints=("1 / (a @ x) <= s",), rule=rule))
        assert err.key == "constraints[0]" and err.message.startswith(message), err.message


def test_derivation_is_bounded_by_expression_nodes():
    """A build creates at most expression_nodes distinct nodes; past it, lowering reports
    the expression being parsed, and the rule's derivations report the objective."""
    text = spec_text(nested("sin", 30))
    gc.collect()  # counts are of new nodes: an earlier test's live nodes would be reused
    _, nodes, _ = build(text)
    gc.collect()
    lowered = lower(load_spec_text(text, FILE)).budget.used
    assert 0 < lowered < nodes / 2
    err = spec_error(text, Limits(expression_nodes=50))
    assert err.key == "minimize" and err.message == (
        "the derived expressions need more than 50 distinct nodes (expression_nodes); "
        "raise it with --limit expression_nodes=VALUE (now 50)"
    )
    gc.collect()
    err = spec_error(text, Limits(expression_nodes=lowered + 10))  # lowering fits, the rule not
    assert err.key == "minimize" and "more than" in err.message
    del err
    gc.collect()  # a margin: a few nodes of an earlier test may have been alive (reused) above
    assert 0.9 * nodes < build(text, Limits(expression_nodes=nodes + 20))[1] <= nodes + 20


def test_constraint_errors_name_the_constraint():
    err = spec_error(spec_text("sum_squares(x)", constraints=("0 <= x <= 1", "1e400 <= sum(x)")))
    assert (
        err.key == "constraints[1]" and "1e400 is beyond the floating-point range" in err.message
    )
    with pytest.raises(ExprError, match="1e308"):
        parse_constraint("-1e308 - 1e308 <= sum(x)", SC)


def test_vjp_of_a_deep_product_needs_no_recursion():
    """A 900-factor product is 900 levels of IR; nothing walks it recursively."""
    deep = limited(Limits(expression_chars=10**5))
    e = parse_expression("sum(" + " * ".join(f"sin({i} * x)" for i in range(1, 901)) + ")", deep)
    g = vjp([(e, E.const(1.0))], [X])[X]
    assert g.shape == ("n",) and 900 < len(E.postorder([g])) < 20 * 900


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("x +\n 1", "'x +\\n 1'"),
        ("x\x00", "'x\\x00'"),
        ("{exp(x\r)}", "'{exp(x\\r)}'"),
        ("x + \u2028\x07", "'x + \\u2028\\x07'"),
    ],
)
def test_messages_are_one_line_whatever_the_text(text, shown):
    """Spec text quoted in a message has its control characters escaped: the diagnostic
    stays one line (``error: FILE:LINE:COL: KEY: message``)."""
    message = parse_error(text)
    assert message.isprintable() and shown in message, message
