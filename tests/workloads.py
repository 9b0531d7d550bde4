"""Small real workloads shared by the fault and cluster tests."""

import copy
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path


def slow_digits(name: str, **changes) -> dict:
    """A digits sweep whose trials last a few seconds: small batches, a few epochs per event,
    so that a kill can land in the middle of fine-tuning."""
    spec = {
        "name": name,
        "dataset": {"name": "digits", "val_size": 0.2},
        "model": {"name": "mlp", "hidden": [256, 256]},
        "pretrain": {"epochs": 3, "lr": 0.05, "batch_size": 64},
        "finetune": {"lr": 0.01, "batch_size": 8},
        "budget": {"epochs": 12, "policy": "even"},
        "target_sparsities": [0.8, 0.9],
        "seeds": [0],
        "strategies": {"geometric": {"rate0": [0.4, 0.5], "patience": None, "epochs_per_event": 2}},
    }
    spec.update(copy.deepcopy(changes))
    return spec


@contextmanager
def driver(args: list[str], cwd: Path, env: dict | None = None):
    """`python -m tune_prune ARGS` in its own session, logging to cwd/driver.log.

    Yields the process; a test kills it with os.killpg(proc.pid, SIGKILL). Whatever
    happens, the whole process group is gone afterwards.
    """
    log = open(cwd / "driver.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "tune_prune", *args], cwd=cwd, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        log.close()
