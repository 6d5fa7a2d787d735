"""The freeze runtime refuses, at install, every data-parallel wrapper whose gradients it does
not rescale (it reaches Megatron DDP's main_grad buffers and a plain module's p.grad only).

The torch wrappers are the real ones, built on a one-process gloo group; the Megatron-FSDP
classes are the installed megatron-core's own, checked by type (they construct only on GPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist

from megatron_tf.errors import UnsupportedMegatronError
from megatron_tf.formats.schedule import ScheduleSpec
from megatron_tf.megatron import guard
from megatron_tf.megatron.freeze_runtime import FreezeRuntime, foreign_data_parallel


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    store = Path(tmp_path_factory.mktemp("store")) / "rendezvous"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


class Chunk(torch.nn.Module):
    """A first-stage-like chunk: an embedding and one linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = torch.nn.Module()
        self.embedding.word_embeddings = torch.nn.Embedding(8, 4)
        self.decoder = torch.nn.Module()
        layer = torch.nn.Module()
        layer.mlp = torch.nn.Module()
        layer.mlp.linear_fc1 = torch.nn.Linear(4, 4)
        self.decoder.layers = torch.nn.ModuleList([layer])


class MegatronLikeDDP(torch.nn.Module):
    """What the runtime recognises as Megatron DDP: the bucket groups it wraps."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.param_to_bucket_group: dict = {}
        self.bucket_groups: list = []
        self.ddp_config = SimpleNamespace(use_megatron_fsdp=False)


def test_plain_modules_and_megatron_ddp_are_recognised() -> None:
    assert foreign_data_parallel(Chunk()) is None
    assert foreign_data_parallel(MegatronLikeDDP(Chunk())) is None


def test_torch_ddp_is_named(one_rank: None) -> None:
    ddp = torch.nn.parallel.DistributedDataParallel(Chunk())
    assert foreign_data_parallel(ddp) == "torch.nn.parallel.distributed.DistributedDataParallel"


def test_torch_fsdp2_by_class_and_by_dtensor_parameters(one_rank: None) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, distribute_tensor

    mesh = init_device_mesh("cpu", (1,))
    sharded = Chunk()
    fully_shard(sharded.decoder.layers[0], mesh=mesh)
    assert foreign_data_parallel(sharded) == "torch FSDP2 (fully_shard)"
    assert foreign_data_parallel(MegatronLikeDDP(sharded)) == "torch FSDP2 (fully_shard)"
    dtensors = Chunk()
    fc1 = dtensors.decoder.layers[0].mlp.linear_fc1
    fc1.weight = torch.nn.Parameter(distribute_tensor(fc1.weight.data, mesh, [Replicate()]))
    assert "decoder.layers.0.mlp.linear_fc1.weight is a DTensor" in foreign_data_parallel(dtensors)


def test_megatron_fsdp_classes_and_config_flag() -> None:
    from megatron.core.distributed import TorchFullyShardedDataParallel
    from megatron.core.distributed.data_parallel_base import _BaseDataParallel
    from megatron.core.distributed.fsdp import mcore_fsdp_adapter

    # core 0.19 has one FullyShardedDataParallel class; later cores a V1 and a V2 behind a
    # factory function of that name: every data-parallel class of the adapter is refused.
    fsdp = [
        c
        for c in vars(mcore_fsdp_adapter).values()
        if isinstance(c, type) and issubclass(c, _BaseDataParallel) and c is not _BaseDataParallel
    ]
    assert fsdp
    for cls in [*fsdp, TorchFullyShardedDataParallel]:
        found = foreign_data_parallel(cls.__new__(cls))  # type only: they build on GPU alone
        assert found is not None and cls.__name__ in found and "FSDP" in found
    flagged = MegatronLikeDDP(Chunk())
    flagged.ddp_config.use_megatron_fsdp = True
    assert foreign_data_parallel(flagged) == "Megatron-FSDP (ddp_config.use_megatron_fsdp)"


def test_install_refuses_in_one_line(one_rank: None, monkeypatch) -> None:
    import megatron.core.utils

    monkeypatch.setattr(megatron.core.utils, "get_model_config", lambda _m: SimpleNamespace())
    monkeypatch.setattr(guard, "check_all", lambda *_a: None)
    chunk = Chunk()
    ddp = torch.nn.parallel.DistributedDataParallel(chunk)
    spec = ScheduleSpec(kind="1f1b", pp=2, microbatches=2)
    rt = FreezeRuntime([ddp], [[[0.5, 0.5]], [[0.0, 0.0]]], spec, rank=0)
    with pytest.raises(UnsupportedMegatronError) as err:
        rt.install()
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("model chunk 0 is wrapped in torch.nn.parallel.distributed.")
    assert rt._handle is None and all(p.requires_grad for p in chunk.parameters())
