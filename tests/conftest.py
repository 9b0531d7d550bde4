import os

import pytest

# Trials and tests run with one torch thread each on the 2-core CI box.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def quickstart_path():
    from pathlib import Path

    return Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"
