"""Tests that run several CPU processes as the ranks of one gloo job."""
import os
import time
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

RANK_TIMEOUT_S = 300  # a rank stuck in a collective fails the test instead of hanging the suite


def spawn_ranks(fn, args, nprocs):
    """Run fn(rank, port, *args) in nprocs processes. The store the ranks meet at is served by this process on
    a port the kernel picked and that stays bound, so no other program can take it between choice and use
    (TORCHELASTIC_USE_AGENT_STORE: every rank connects as a client, as under torchrun)."""
    store = dist.TCPStore("127.0.0.1", 0, nprocs + 1, is_master=True, wait_for_workers=False,
                          timeout=timedelta(seconds=RANK_TIMEOUT_S))
    os.environ["TORCHELASTIC_USE_AGENT_STORE"] = "True"
    try:
        context = mp.spawn(fn, args=(store.port, *args), nprocs=nprocs, join=False)
        deadline = time.monotonic() + RANK_TIMEOUT_S
        while not context.join(timeout=5):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f"the gloo ranks did not finish within {RANK_TIMEOUT_S} s")
    finally:
        del os.environ["TORCHELASTIC_USE_AGENT_STORE"]
        del store


def gloo_environment(rank: int, port: int, world: int, local_world: int | None = None) -> None:
    """The environment torchrun gives rank `rank` of `world` (all on this machine, meeting at `port`);
    LOCAL_WORLD_SIZE only where given."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    if local_world is not None:
        os.environ["LOCAL_WORLD_SIZE"] = str(local_world)


def join_gloo(rank: int, port: int, world: int):
    """Inside a spawned rank: set its environment, one torch thread, and join the CPU process group."""
    from train.distributed import init_distributed

    gloo_environment(rank, port, world)
    torch.set_num_threads(1)
    return init_distributed("cpu")
