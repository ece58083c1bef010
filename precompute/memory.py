"""Will the model fit? Its weights' size, counted before loading, against the device's free memory.

An 8B decoder in float32 needs 32 GB: on a 24 GB card (or a laptop) loading it fails after minutes with an
allocator error, or the machine swaps. The parameters are counted on PyTorch's ``meta`` device (shapes, no
storage, no file read), so the job can refuse in one line before any download or load, and the estimate
printed before the run includes the model's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GB = 1024**3
BYTES_PER_ELEMENT = {"float32": 4, "bfloat16": 2, "float16": 2}
# Weights may take this share of the free memory; the rest is left for activations, the allocator and the OS.
WEIGHT_SHARE = 0.9


@dataclass(frozen=True)
class Footprint:
    """The model's weights (bytes, in the dtype it runs in) and the free memory of its device (None: unknown)."""

    weights: int
    free: int | None
    device: str
    dtype: str

    @property
    def fits(self) -> bool:
        return self.free is None or self.weights <= WEIGHT_SHARE * self.free

    def describe(self) -> str:
        free = f" of {self.free / GB:.1f} GB free" if self.free is not None else ""
        return f"model {self.weights / GB:.2f} GB in {self.dtype}{free} on {self.device}"


def parameter_count(auto_class, config) -> int | None:
    """Parameters of the model ``config`` describes, counted on the meta device (no memory, no file read).
    None when the class cannot be built that way (the caller then skips the check, it does not guess)."""
    import torch

    try:
        with torch.device("meta"):
            model = auto_class.from_config(config, trust_remote_code=False)
    except Exception:  # a custom class that does not build on meta: no count rather than a wrong one
        return None
    seen: set[int] = set()  # tied weights (embeddings and LM head) are stored once
    total = 0
    for parameter in model.parameters():
        if id(parameter) not in seen:
            seen.add(id(parameter))
            total += parameter.numel()
    return total


def free_bytes(device: str) -> int | None:
    """Free memory of the device: the CUDA allocator's free bytes, or the kernel's MemAvailable on the CPU."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    if device == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def footprint(auto_class, config, device: str, dtype: str) -> Footprint | None:
    count = parameter_count(auto_class, config)
    if count is None:
        return None
    return Footprint(count * BYTES_PER_ELEMENT[dtype], free_bytes(device), device, dtype)


def refusal(spec: str, fp: Footprint) -> str:
    """The one-line reason a model will not fit, with what to do."""
    smaller = " pass --dtype bfloat16 (half the memory)," if fp.dtype == "float32" and fp.device.startswith("cuda") else ""
    return (f"model {spec!r} will not fit: its weights need {fp.weights / GB:.1f} GB in {fp.dtype} but {fp.device} has "
            f"{fp.free / GB:.1f} GB free;{smaller} use a GPU with more memory or a smaller model")

