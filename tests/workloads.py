"""Small real workloads shared by the fault and cluster tests."""

import copy


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
