"""RPFM's reflow data: the teacher's couplings (z, x1_hat), planned once, solved once, kept on disk.

Reflow (flow_matching.Reflow says why it works) trains a student on straight lines between a noise
z and the image latent x1_hat that the TEACHER's guided ODE turns z into. Solving that ODE is the
expensive part (every pair costs a full guided teacher sample), so it is done once, before the
student trains, and written to <out>/reflow_couplings.pt:

    plan(seed)  ->  which training pairs (mirrored or not) and which z, fixed by the seed
    solve       ->  x1_hat = teacher ODE(z | the pair's conditions), chunk by chunk
    Couplings   ->  the training pairs with their z and x1_hat, as a Dataset for train.py's loop

The file is resumable and atomic like a checkpoint: saved every few chunks and on Ctrl-C, continued
from `done`; the plan is seeded, so a continued file equals an uninterrupted one. A file made with
another teacher, solver or pair set is solved anew. Under DDP rank 0 solves, the others wait and read.

Paper: Liu et al., Flow Straight and Fast (arXiv 2209.03003); guidance distilled as InstaFlow
(arXiv 2309.06380).
Run:   python train.py --method reflow     (trains the teacher if missing, then this, then the student)
Test:  python -m pytest -q tests/test_train.py -k reflow

Shape letters: n pairs planned, C latent channels, h w latent size.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as torch_dist

import cli
import flow_matching
from distributed import Dist, FlipIndexed
from pipeline import batch_keypoints, build_cond, load_checkpoint, save_checkpoint

CHUNK = 256  # pairs per teacher batch; the file is saved every SAVE_EVERY chunks
SAVE_EVERY = 8


class Couplings(torch.utils.data.Dataset):
    """Item k: the (flip-indexed) training pair `index[k]`, with its noise z and the teacher's x1_hat."""

    def __init__(self, pairs: FlipIndexed, state: dict):
        self.pairs, self.index, self.noise, self.x1 = pairs, state["index"], state["noise"], state["x1"]

    def __len__(self):
        return len(self.index)

    def __getitem__(self, k):
        return {**self.pairs[int(self.index[k])], "noise": self.noise[k], "x1": self.x1[k]}


def plan(dataset, teacher_ckpt: dict, seed: int, pairs: int, flip: bool, steps: int) -> dict:
    """The seeded plan: which pairs (`pairs`, 0 = all; mirrored ones chosen here when `flip`), which
    noise; x1 still to fill. `steps`: the teacher's ODE steps, recorded with its solver and guidance."""
    n, g = len(dataset), torch.Generator().manual_seed(seed)
    count = min(pairs or n, n)
    index = torch.randperm(n, generator=g)[:count]  # (n,) pairs
    if flip:
        index = index + n * (torch.rand(count, generator=g) < 0.5).long()  # >= n: mirrored (FlipIndexed)
    c, h = teacher_ckpt["config"]["model"]["latent_channels"], teacher_ckpt["config"]["model"]["latent_size"]
    noise = torch.randn(count, c, h, h, generator=g)  # (n, C, h, w): the z of each coupling
    return {"method": "couplings", "index": index, "noise": noise, "x1": torch.zeros_like(noise), "done": 0,
            "teacher": {"step": teacher_ckpt["step"], "coupling_steps": steps,
                        "solver": flow_matching.TEACHER_SOLVER, "w": flow_matching.DEFAULT_GUIDANCE["w_src"]}}


def get_couplings(path, wanted: dict, dist: Dist, dataset, teacher) -> dict:
    """The couplings of plan `wanted` at `path`: read, continued where a run stopped, or solved anew."""
    path = Path(path)
    state = load_checkpoint(path, "couplings") if path.is_file() else wanted
    if state["teacher"] != wanted["teacher"] or not torch.equal(state["index"], wanted["index"]):
        if dist.main:  # another teacher, solver or pair set: these couplings would teach the wrong thing
            print(f"[couplings] {path} was made with {state['teacher']}, now {wanted['teacher']}: solving anew")
        state = wanted
    if dist.main and state["done"] < len(state["index"]):
        solve(state, path, dist, dataset, teacher)
    if dist.world > 1:
        torch_dist.barrier()
        state = load_checkpoint(path, "couplings")
    if dist.main:
        info = state["teacher"]
        print(f"[couplings] {len(state['index'])} couplings in {path} (teacher: "
              f"{info['solver'].capitalize()} {info['coupling_steps']} steps, w {info['w']:g})")
    return state


@torch.no_grad()
def solve(state: dict, path: Path, dist: Dist, dataset, teacher):
    """Fill state["x1"] from state["done"] on, chunk by chunk, saving as it goes."""
    process, pairs = flow_matching.FlowMatching(), FlipIndexed(dataset)
    steps = state["teacher"]["coupling_steps"]
    starts = range(state["done"], len(state["index"]), CHUNK)
    print(f"[couplings] solving the teacher's ODE for {len(state['index']) - state['done']} pairs -> {path}")
    try:
        for i, start in enumerate(cli.progress(starts, desc="[couplings]")):
            idx = state["index"][start:start + CHUNK]
            batch = torch.utils.data.default_collate([pairs[int(k)] for k in idx])
            cond = build_cond(teacher, None, batch["source"].to(dist.device), batch["target_pose"].to(dist.device),
                              keypoints=batch_keypoints(batch, dist.device))
            noise = state["noise"][start:start + CHUNK].to(dist.device)  # (b, C, h, w)
            x1 = flow_matching.couplings(process, teacher, noise, cond, steps)  # (b, C, h, w)
            state["x1"][start:start + len(idx)] = x1.cpu()
            state["done"] = start + len(idx)
            if (i + 1) % SAVE_EVERY == 0:
                save_checkpoint(path, state)
    finally:  # Ctrl-C or a crash: the chunks solved so far are kept, the next run continues
        save_checkpoint(path, state)
