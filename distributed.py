"""One training on one or several processes, reproducibly: ranks, the seeded batch order, RNG states.

`torchrun --nproc_per_node=N train.py ...` starts N processes; `setup_distributed` joins them into a
process group (NCCL on GPUs, gloo on CPU) and plain `python train.py` is rank 0 of 1. The batch order
is drawn here, not by a shuffling DataLoader: epoch e is a permutation seeded by (seed, e), the
flip coins are tossed with it, and each rank takes its share of every global batch. Starting at a
step skips exactly the batches an uninterrupted run used, and `rng_states` saves every rank's RNG,
which together make `--resume` continue bit-identically (tests/test_train.py checks it).

Used by train.py. Test: python -m pytest -q tests/test_train.py

Shape letters: n items, B the global batch.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn as nn

import data
from pipeline import pick_device


# ----------------------------------------------------------------------------------------------
# Devices and processes (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; plain python is rank 0 of 1)
# ----------------------------------------------------------------------------------------------

@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_name: str) -> Dist:
    """Join the torchrun process group when launched by torchrun: NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist(device=pick_device(device_name))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    if device.type == "cpu":
        # note: every rank's OpenMP threads spin while they wait for work; more threads than
        # cores (2 ranks x 2 threads on 2 cores) made a step 20x slower, so the cores are shared out
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank=torch_dist.get_rank(), world=world, device=device)


def seed_everything(seed: int):
    random.seed(seed)
    torch.manual_seed(seed)  # note: also seeds every CUDA device


# ----------------------------------------------------------------------------------------------
# Data: a deterministic, resumable, rank-sharded order, so a resumed run sees the same batches
# ----------------------------------------------------------------------------------------------

class EpochBatches(torch.utils.data.Sampler):
    """Yields this rank's index lists forever: epoch e is a permutation seeded by (seed, e).

    `batch_size` is the global batch, split evenly over the `world` ranks. Starting at
    `start_step` skips exactly the batches an uninterrupted run already used, which is what
    makes `--resume` continue on the same data. With `flip`, an index i >= n means "item i - n,
    mirrored": the coin is tossed here, in the checkpointed order, not in a worker.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1,
                 start_step: int = 0, flip: bool = False):
        if n < batch_size:
            raise ValueError(f"--batch-size {batch_size} is larger than the dataset ({n} pairs)")
        if batch_size % world:
            raise ValueError(f"--batch-size {batch_size} does not split over {world} processes")
        self.n, self.batch, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.start, self.flip = start_step, flip
        self.per_epoch = n // batch_size  # drop the ragged last batch: every step is full

    def epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=g)  # (n,)
        if self.flip:
            order = order + self.n * (torch.rand(self.n, generator=g) < 0.5).long()  # (n,)
        return order

    def __iter__(self):
        step = self.start
        while True:
            epoch, first = divmod(step, self.per_epoch)
            order = self.epoch_order(epoch)  # drawn once per epoch
            for k in range(first, self.per_epoch):
                idx = order[k * self.batch:(k + 1) * self.batch]  # (batch,) the global batch
                yield idx[self.rank::self.world].tolist()  # this rank's share
            step += self.per_epoch - first


class FlipIndexed(torch.utils.data.Dataset):
    """Index i < n is pair i as stored, i >= n is pair i - n mirrored (joints swapped left/right)."""

    def __init__(self, pairs: data.PairDataset):
        self.pairs = pairs

    def __len__(self):
        return 2 * len(self.pairs)

    def __getitem__(self, i):
        n = len(self.pairs)
        return self.pairs.load_item(i % n, flipped=i >= n)


def rng_states(dist: Dist) -> list:
    """Every rank's RNG state (rank 0 writes them all, so each rank resumes its own noise)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "cuda": torch.cuda.get_rng_state(dist.device) if dist.device.type == "cuda" else None}
    if dist.world == 1:
        return [state]
    states = [None] * dist.world
    torch_dist.all_gather_object(states, state)
    return states


def check_ranks_agree(model: nn.Module, dist: Dist):
    """DDP's promise, checked: every rank ends with the same weights."""
    total = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    gathered = [torch.zeros_like(total) for _ in range(dist.world)]
    torch_dist.all_gather(gathered, total.to(dist.device))
    if dist.main:
        agree = all(torch.allclose(g, gathered[0]) for g in gathered)
        print(f"[ddp] {dist.world} ranks hold identical weights: {agree}")
