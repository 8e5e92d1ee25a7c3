"""Which number format to compute in, chosen once per device, with the reason said out loud.

    precision = choose_precision()            # or choose_precision("cuda:1"), choose_precision(cpu_bf16=True)
    print(precision.reason)                   # "NVIDIA H200: native bf16 -> bf16 autocast"
    with precision.autocast():
        loss = model(**batch).loss
    scaler = precision.grad_scaler()          # a no-op scaler unless fp16 needs one

The rules (what the hardware can do natively, not what it can emulate):

- CUDA with native bf16 (Ampere and later: A100, H100, RTX 30xx+): bf16 autocast. bf16 keeps fp32's
  exponent range, so gradients do not underflow and no loss scaling is needed.
- Older CUDA GPUs (T4, V100, P100): fp16 autocast. fp16's smallest normal number is 6e-5, so small
  gradients flush to zero; training multiplies the loss by a large factor before backward and
  divides it out before the optimizer step (``torch.amp.GradScaler``).
- CPU: fp32 by default. CPUs with AMX or AVX512-BF16 multiply bf16 matrices natively (2-3x faster
  than fp32 on this project's CI machine); ``cpu_bf16=True`` opts in there. Elsewhere bf16 on a CPU
  is emulated and slower, so the request falls back to fp32 and the reason says so.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # None: no autocast, plain fp32


@dataclass(frozen=True)
class Precision:
    """The decision: where to compute, in which autocast dtype (None = fp32), whether to scale the loss."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    needs_grad_scaler: bool
    reason: str

    @property
    def name(self) -> str:
        """"fp32", "bf16" or "fp16"."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]

    def autocast(self) -> AbstractContextManager:
        """torch.autocast for this device and dtype (disabled for fp32)."""
        dtype = self.autocast_dtype or torch.bfloat16  # any valid dtype; unused when disabled
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast_dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler that scales only when fp16 needs it; otherwise its calls pass straight through."""
        return torch.amp.GradScaler(self.device.type, enabled=self.needs_grad_scaler)


def default_device() -> torch.device:
    """The first GPU if there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cuda_has_native_bf16(device: torch.device) -> bool:
    """True on GPUs that compute in bf16 natively (compute capability 8.0+), not by emulation.

    torch.cuda.is_bf16_supported asks about the current GPU; the GPUs of one machine are alike.
    """
    if "including_emulation" in inspect.signature(torch.cuda.is_bf16_supported).parameters:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.cuda.get_device_capability(device) >= (8, 0)  # older torch: Ampere or later


def cpu_has_native_bf16() -> bool:
    """True if the CPU has AMX or AVX512-BF16 instructions (bf16 matrix products in hardware)."""
    capability = torch.backends.cpu.get_cpu_capability()  # e.g. "AVX2", "AVX512", "AMX"
    if "AMX" in capability.upper():
        return True
    return bool(cpu_flags() & {"amx_bf16", "avx512_bf16"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The instruction-set flags in /proc/cpuinfo (empty where there is no such file, e.g. macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def choose_precision(device: str | torch.device | None = None, precision: str = "auto",
                     cpu_bf16: bool = False) -> Precision:
    """Decide the compute precision for `device` (default: the first GPU, else the CPU).

    precision="auto" applies the rules in this module's docstring; "fp32", "bf16" or "fp16" force one
    (fp16 brings a gradient scaler). cpu_bf16=True opts in to bf16 autocast on a CPU that has it natively.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device) if device is not None else default_device()
    if precision != "auto":
        return Precision(device, DTYPES[precision], precision == "fp16", f"{precision} requested")
    if device.type == "cuda":
        return choose_cuda(device)
    if device.type == "cpu":
        return choose_cpu(device, cpu_bf16)
    return Precision(device, None, False, f"{device.type}: fp32 (no precision rule for this device type)")


def choose_cuda(device: torch.device) -> Precision:
    name = torch.cuda.get_device_name(device)
    if cuda_has_native_bf16(device):
        return Precision(device, torch.bfloat16, False, f"{name}: native bf16 -> bf16 autocast")
    return Precision(device, torch.float16, True,
                     f"{name}: no native bf16 -> fp16 autocast with a gradient scaler for training")


def choose_cpu(device: torch.device, cpu_bf16: bool) -> Precision:
    if not cpu_bf16:
        return Precision(device, None, False, "CPU: fp32 (cpu_bf16=True opts in to bf16 where the CPU has it)")
    if cpu_has_native_bf16():
        return Precision(device, torch.bfloat16, False, "CPU with AMX/AVX512-BF16: bf16 autocast (opted in)")
    return Precision(device, None, False, "CPU without AMX/AVX512-BF16: fp32 (bf16 would be emulated, slower)")
