"""Who this worker's device is: the identity that profile records are keyed by."""
from __future__ import annotations

import functools
import platform
import subprocess


@functools.cache
def identify(device_kind: str) -> dict[str, str]:
    family = device_kind.split(".")[0]
    if family == "cuda":
        q = "name,compute_cap,driver_version"
        try:
            out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True,
                                 text=True, timeout=30).stdout.splitlines()[0]
            name, cc, driver = (x.strip() for x in out.split(","))
            return {"kind": device_kind, "name": name, "compute_capability": cc, "driver": driver}
        except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
            return {"kind": device_kind, "name": "unknown nvidia", "compute_capability": "", "driver": ""}
    if family == "rocm":
        return {"kind": device_kind, "name": "amd " + device_kind.split(".")[1], "driver": ""}
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {"kind": device_kind, "name": model or platform.processor(), "machine": platform.machine()}
