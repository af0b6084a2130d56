"""What the benchmark scripts share: the machine they ran on, and latency percentiles."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import faiss
import numpy as np
import torch

# The tests' tiny open_clip architecture: real open_clip code at a negligible encode cost.
TINY_MODEL = Path(__file__).resolve().parents[1] / "tests" / "data" / "mgvr-test-tiny.json"


def machine_info(device: torch.device) -> dict:
    """CPUs, library versions, torch threads, device (and the GPU's name on CUDA), load."""
    info = {"cpu_count": os.cpu_count(),
            "cpus_usable": (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                            else None),
            "torch": torch.__version__, "faiss": faiss.__version__,
            "torch_threads": torch.get_num_threads(), "device": str(device),
            "python": platform.python_version(), "load_avg": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def percentiles(values: list[float]) -> dict[str, float]:
    return {"p50": round(float(np.percentile(values, 50)), 3),
            "p95": round(float(np.percentile(values, 95)), 3)}
