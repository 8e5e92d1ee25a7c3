"""choose_precision: one rule per device kind, each branch reached by faking what the hardware reports."""

from __future__ import annotations

import pytest
import torch

from megabert_edu import precision as precision_module
from megabert_edu.precision import Precision, choose_precision, cpu_flags


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device whose bf16 support the test sets; nothing touches a real GPU."""

    def install(name: str, native_bf16: bool, capability: tuple[int, int]):
        calls = []

        def is_bf16_supported(including_emulation: bool = True):
            calls.append(including_emulation)
            return native_bf16 or including_emulation  # emulation is always "supported"

        monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        return calls

    return install


def test_cuda_with_native_bf16_gets_bf16_autocast(fake_gpu):
    calls = fake_gpu("NVIDIA H200", native_bf16=True, capability=(9, 0))
    p = choose_precision("cuda")
    assert (p.device.type, p.autocast_dtype, p.needs_grad_scaler, p.name) == ("cuda", torch.bfloat16, False, "bf16")
    assert "H200" in p.reason and "bf16" in p.reason
    assert calls == [False]  # asked about native support, not emulation


def test_older_cuda_gets_fp16_and_a_grad_scaler(fake_gpu):
    fake_gpu("Tesla T4", native_bf16=False, capability=(7, 5))
    p = choose_precision("cuda:0")
    assert (p.autocast_dtype, p.needs_grad_scaler, p.name) == (torch.float16, True, "fp16")
    assert "T4" in p.reason and "scaler" in p.reason


def test_torch_without_including_emulation_falls_back_to_capability(fake_gpu, monkeypatch):
    fake_gpu("Tesla V100", native_bf16=False, capability=(7, 0))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # old signature, counts emulation
    assert choose_precision("cuda").autocast_dtype == torch.float16
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert choose_precision("cuda").autocast_dtype == torch.bfloat16


def test_cpu_is_fp32_unless_opted_in():
    p = choose_precision("cpu")
    assert (p.autocast_dtype, p.needs_grad_scaler, p.name) == (None, False, "fp32")
    assert "cpu_bf16=True" in p.reason


@pytest.mark.parametrize("capability, flags, expected", [
    ("AMX", set(), torch.bfloat16),
    ("AVX512", {"avx512f", "avx512_bf16"}, torch.bfloat16),
    ("AVX512", {"avx512f", "amx_bf16"}, torch.bfloat16),
    ("AVX2", {"avx2"}, None),
])
def test_cpu_bf16_opt_in_needs_native_support(monkeypatch, capability, flags, expected):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(precision_module, "cpu_flags", lambda: flags)
    p = choose_precision("cpu", cpu_bf16=True)
    assert p.autocast_dtype == expected and not p.needs_grad_scaler
    assert ("AMX/AVX512-BF16" in p.reason) and (("opted in" in p.reason) == (expected is not None))


def test_forced_precision_and_bad_name():
    assert choose_precision("cpu", precision="fp16") == Precision(torch.device("cpu"), torch.float16, True,
                                                                  "fp16 requested")
    assert choose_precision("cpu", precision="bf16").autocast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"precision must be one of .*'fp8'"):
        choose_precision("cpu", precision="fp8")


def test_autocast_and_scaler_follow_the_choice():
    x, w = torch.randn(4, 8), torch.randn(8, 3)
    with choose_precision("cpu", precision="bf16").autocast():
        assert (x @ w).dtype == torch.bfloat16
    with choose_precision("cpu").autocast():
        assert (x @ w).dtype == torch.float32
    assert not choose_precision("cpu").grad_scaler().is_enabled()


def test_cpu_flags_parses_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx512f avx512_bf16\n\n")
    assert cpu_flags(cpuinfo) == {"fpu", "sse2", "avx512f", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()
