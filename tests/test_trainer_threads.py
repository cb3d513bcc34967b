"""CPU thread policy of the trainer: cores minus loader workers, unless OMP_NUM_THREADS says otherwise."""
import torch

from train.distributed import DistContext
from train.methods.contrastive import ContrastiveConfig
from train.trainer import _cpu_threads


def _restore_threads(fn):
    before = torch.get_num_threads()
    try:
        return fn()
    finally:
        torch.set_num_threads(before)


def test_threads_leave_cores_to_loader_workers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert _restore_threads(lambda: _cpu_threads(DistContext(), workers=3)) == 5
    assert _restore_threads(lambda: _cpu_threads(DistContext(), workers=8)) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two ranks share the 8 cores
    assert _restore_threads(lambda: _cpu_threads(DistContext(), workers=1)) == 3


def test_explicit_omp_setting_is_left_alone(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    before = torch.get_num_threads()
    assert _cpu_threads(DistContext(), workers=0) == before


def _autotune_during_train(monkeypatch, device: str, before: bool) -> tuple[bool, bool]:
    """(cuDNN autotuning while train() runs its loop, after it returns), with the loop stubbed out."""
    import train.trainer as trainer

    seen = []
    monkeypatch.setattr(trainer, "init_distributed", lambda wanted: DistContext(device=torch.device(device)))
    monkeypatch.setattr(trainer, "shutdown", lambda ctx: None)
    monkeypatch.setattr(trainer, "_train", lambda *args: seen.append(torch.backends.cudnn.benchmark))
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", before)
    trainer.train(ContrastiveConfig(shards="unused", out="unused", steps=1))
    return seen[0], torch.backends.cudnn.benchmark


def test_cudnn_autotuning_is_on_for_cuda_runs_only_and_restored(monkeypatch):
    assert _autotune_during_train(monkeypatch, "cuda", before=False) == (True, False)
    assert _autotune_during_train(monkeypatch, "cpu", before=False) == (False, False)
    assert _autotune_during_train(monkeypatch, "cpu", before=True) == (True, True)
