"""Import torchvision on a CPU-only torch build.

The registry's torchvision wheels are CUDA builds. On a CPU torch their native
library fails to load (torchvision tolerates that), but
``torchvision/_meta_registrations.py`` then registers fake kernels for
``torchvision::nms`` and ``torchvision::qnms`` and the import dies with
"operator torchvision::nms does not exist". Declaring those two op schemas
first, and only when the native library cannot load, lets models, transforms
and datasets work; ``torchvision.ops`` stays unusable on such a machine, and
tune_prune does not use it.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import types

_fallback_lib = None  # keeps the schema registrations alive for the process


def _native_library_loads() -> bool:
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return True  # let the real import raise its own ImportError
    candidates = glob.glob(os.path.join(os.path.dirname(spec.origin), "_C*.so"))
    if not candidates:
        return False
    try:
        torch.ops.load_library(candidates[0])
    except OSError:
        return False
    return True


def import_torchvision() -> types.ModuleType:
    """Return the torchvision module, working around a CPU-only torch."""
    global _fallback_lib
    import sys

    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    if _fallback_lib is None and not _native_library_loads():
        import torch

        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _fallback_lib = lib
    import torchvision

    return torchvision
