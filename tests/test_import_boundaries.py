import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import need


def test_pure_core_loads_neither_ray_nor_mlflow():
    code = (
        "import sys\n"
        "import tune_prune.pruning, tune_prune.frontier, tune_prune.loop, tune_prune.spec, tune_prune.dense\n"
        "import tune_prune.metrics, tune_prune.text, tune_prune.lm, tune_prune.recommend\n"
        "bad = sorted(m for m in ('ray', 'mlflow') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "import tune_prune.tracking\n"
        "assert 'mlflow' in sys.modules\n"  # the check itself can fail
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- conftest.need
# The suite's own rule for missing tools: a skip locally, a failure on CI (CI=true), where
# .ci/run installs them and a skip would turn a test that never ran into a green build.


@pytest.mark.parametrize("ci,outcome", [("true", pytest.fail.Exception), ("TRUE", pytest.fail.Exception),
                                        ("", pytest.skip.Exception), ("false", pytest.skip.Exception)])
def test_need_skips_locally_and_fails_on_ci(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    # caught by hand: under pytest.raises a wrong skip would skip this test instead of failing it
    try:
        need(None, "shellcheck not installed")
    except (pytest.skip.Exception, pytest.fail.Exception) as exc:
        raised = exc
    else:
        raised = None
    assert type(raised) is outcome and "shellcheck not installed" in str(raised)
    need(True, "never raised: the condition holds")  # nothing to do when present


def test_needs_marker_fails_a_selected_test_under_ci_and_skips_it_otherwise(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.needs(False, reason='probe tool missing')\n"
        "def test_missing():\n    pass\n\n"
        "@pytest.mark.needs(True, reason='probe tool present')\n"
        "def test_present():\n    pass\n")

    def run(ci: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "CI": ci}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", "test_probe.py"],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    local = run("")
    assert local.returncode == 0, local.stdout
    assert "1 passed, 1 skipped" in local.stdout and "probe tool missing" in local.stdout
    ci = run("true")
    assert ci.returncode == 1, ci.stdout
    assert "1 passed, 1 error" in ci.stdout and "CI=true" in ci.stdout and "probe tool missing" in ci.stdout
