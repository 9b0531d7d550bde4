import os

import pytest

# Trials and tests run with one torch thread each on the 2-core CI box.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def on_ci() -> bool:
    """True under CI (the CI variable set to "true", as GitHub Actions and GitLab set it)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def need(condition: object, reason: str) -> None:
    """Skip the calling test with ``reason`` unless ``condition`` holds; under CI, fail instead.

    For what `.ci/run` installs (PostgreSQL, Debian's dataset-fashion-mnist, shellcheck,
    mlflow, runuser): on CI a missing one means the install broke, and a skip there would
    turn a test that never ran into a green build. Not for a CUDA device: CI never has one.
    """
    if condition:
        return
    if on_ci():
        pytest.fail(f"{reason} (CI=true: .ci/run installs this, so the test must run, not skip)", pytrace=False)
    pytest.skip(reason)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs(condition, reason): skip unless condition holds; fail instead of skipping when CI=true",
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    # @pytest.mark.needs(...) is need() as a decorator: evaluated before the test runs
    for mark in item.iter_markers("needs"):
        need(*mark.args, **mark.kwargs)


@pytest.fixture(scope="session")
def quickstart_path():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"


def pytest_sessionfinish(session, exitstatus):
    session.config._tune_prune_exit = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave without the interpreter's teardown once pytest has reported.

    A fresh-clone CI run passed every test and then died with a segmentation fault in the
    interpreter's shutdown (native libraries' threads torn down in the wrong order), which
    turns a green run red. Everything is written by now: flush and exit with pytest's code.
    """
    import os
    import sys

    code = getattr(config, "_tune_prune_exit", None)
    if code is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
