"""Which device a collective's tensors go on, and when a time is read on GPU.

NCCL accepts only CUDA tensors, gloo only CPU ones; the gloo path is run for real by the
distributed tests, the NCCL choice is checked here by replacing the backend query.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from megatron_tf.megatron import distributed


def test_gloo_and_no_group_keep_tensors_on_cpu(monkeypatch) -> None:
    assert distributed.collective_device() == torch.device("cpu")  # no process group yet
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: "gloo")
    assert distributed.collective_device() == torch.device("cpu")


def test_nccl_puts_tensors_on_the_current_cuda_device(monkeypatch) -> None:
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert distributed.collective_device() == torch.device("cuda", 3)


def test_device_clock_reads_after_the_gpu_finished(monkeypatch) -> None:
    events: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: events.append("sync"))
    monkeypatch.setattr(distributed.time, "perf_counter", lambda: events.append("clock") or 7.0)
    assert distributed.device_clock() == 7.0
    assert events == ["sync", "clock"]


def test_device_clock_on_cpu_is_the_host_clock(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(
        torch.cuda, "synchronize", lambda *a: (_ for _ in ()).throw(AssertionError("synced"))
    )
    monkeypatch.setattr(distributed.time, "perf_counter", lambda: 2.5)
    assert distributed.device_clock() == 2.5
