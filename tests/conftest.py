"""Shared pytest configuration: the ``--update-golden`` option (STYLE.md practice 10)."""


def pytest_addoption(parser):
    parser.addoption(
        "--update-golden",
        action="store_true",
        default=False,
        help="rewrite the files under tests/golden/ from the current output instead of "
        "comparing against them",
    )
