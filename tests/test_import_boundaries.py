import subprocess
import sys


def test_pure_core_loads_neither_ray_nor_mlflow():
    code = (
        "import sys\n"
        "import tune_prune.pruning, tune_prune.frontier, tune_prune.loop, tune_prune.spec, tune_prune.dense\n"
        "bad = sorted(m for m in ('ray', 'mlflow') if m in sys.modules)\n"
        "assert not bad, bad\n"
        "import tune_prune.tracking\n"
        "assert 'mlflow' in sys.modules\n"  # the check itself can fail
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
