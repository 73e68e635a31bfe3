"""Shared pytest configuration: the ``--update-golden`` option (STYLE.md practice 10)."""


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the files under tests/golden/ from the current output instead of "
        "comparing against them",
    )


# Fuzzing and hostile input (tests/test_fuzz.py, tests/test_untrusted.py, tests/fuzz_long.py).
# Hypothesis profiles: "ci" (selected when CI is set) is derandomised with a fixed budget;
# "dev" (the default elsewhere) draws new examples each run; "long" is for local runs
# (HYPOTHESIS_PROFILE=long; `python tests/fuzz_long.py` also prints counts). No profile keeps
# a database, so nothing is written into the tree: a failure prints its reproduction blob.
import os as _os  # noqa: E402

import pytest as _pytest  # noqa: E402
from hypothesis import HealthCheck as _HealthCheck  # noqa: E402
from hypothesis import Phase as _Phase  # noqa: E402
from hypothesis import settings as _settings  # noqa: E402

_FUZZ_SETTINGS = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    "suppress_health_check": [
        _HealthCheck.too_slow,
        _HealthCheck.data_too_large,
        _HealthCheck.filter_too_much,
    ],
}
FUZZ_EXAMPLES = 50
"""Examples per fuzz test in the suite (two tests): well under two minutes on two cores."""
# CI does not shrink a failure (that could take minutes); the printed blob reproduces it.
_settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=FUZZ_EXAMPLES,
    phases=[_Phase.explicit, _Phase.reuse, _Phase.generate],
    **_FUZZ_SETTINGS,
)
_settings.register_profile("dev", max_examples=FUZZ_EXAMPLES, **_FUZZ_SETTINGS)
_settings.register_profile("long", max_examples=10_000, **_FUZZ_SETTINGS)
_settings.load_profile(
    _os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _os.environ.get("CI") else "dev")
)


@_pytest.fixture(scope="session")
def build_worker():
    """One build worker subprocess (tests/contract.py) shared by the hostile-input tests."""
    from contract import Worker

    worker = Worker()
    yield worker
    worker.close()
