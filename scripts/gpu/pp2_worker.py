"""Two ranks on one GPU: a pp 2 pipeline's activation send and gradient return, on `backend`."""

import sys

import torch
import torch.distributed as dist


def main(backend: str) -> None:
    torch.cuda.set_device(0)  # both ranks on the one GPU
    dist.init_process_group(backend=backend)
    rank = dist.get_rank()
    x = torch.full((1024,), float(rank + 1), device="cuda")
    if rank == 0:
        dist.send(x, dst=1)
        dist.recv(x, src=1)
        assert torch.all(x == 4.0), x[:4]
    else:
        buf = torch.empty_like(x)
        dist.recv(buf, src=0)
        dist.send(buf * 4, dst=0)
    dist.barrier()
    if rank == 0:
        print(f"{backend}: send/recv between two ranks on cuda:0 works")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
