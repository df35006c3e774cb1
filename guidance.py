"""Classifier-free guidance, shared by both processes: condition dropping, the guided mix, NFE counting.

Concept. One network learns the conditional answer AND the answers with conditions missing, because
at training time conditions are replaced by zeros at random (`drop_conditions`). At sampling time the
answers are mixed so that the conditions count more than they did in training (Ho & Salimans 2022);
FPDM's *cumulative* form has one weight per condition group (`guided_output`):

    out = u + w_src * (c_src - u) + w_fus * (c_full - c_src)

    u       every condition dropped (zeros)
    c_src   pose + source tokens kept, fusion embedding dropped
    c_full  every condition kept

The same formula is applied to noise predictions (diffusion.py) and to velocities (flow_matching.py),
which is why it lives here, in a file both can import without knowing about each other.

Cost. All branches run as ONE batched forward of (branches x B) rows, so the network evaluations per
image (NFE) are steps x evaluations per step x branches. `guidance_branches` finds the branches that
are actually needed: with w_src == w_fus the middle branch cancels (plain CFG, two branches), with
both weights 1 only the conditional branch is left (one call per step).

Papers: classifier-free guidance, Ho & Salimans 2022 (arXiv 2207.12598); joint + independent condition
dropping, InstructPix2Pix, Brooks et al. 2023 (arXiv 2211.09800); FPDM, Lee et al. 2024
(arXiv 2412.07333).

Run: python diffusion.py / python flow_matching.py print NFE tables built from `RowCounter` here.
Tests: python -m pytest -q tests/test_diffusion.py tests/test_flow_matching.py

Shape letters: B batch, k guidance branches.
"""
from __future__ import annotations

import sys

import torch

COND_KEYS = ("pose", "src_tokens", "fusion")
SOURCE_KEYS = frozenset({"pose", "src_tokens"})  # what the middle guidance branch c_src keeps
# FPDM's release drops each of pose, source image and fusion module with p = 0.2, independently
INDEPENDENT_DROP = {"pose": 0.2, "src_tokens": 0.2, "fusion": 0.2}
# note: with independent drops alone, the all-dropped branch u that guidance extrapolates FROM is
# seen in 0.2^3 = 0.8% of FPDM's samples (4% of RPFM's): u stays the least trained answer while it
# carries weight 1 - w = -1. A joint drop of every condition at once (InstructPix2Pix uses 5% and
# two independent 5% drops) trains it on 10% of the batch more.
# train.py's defaults (--drop-prob, --joint-drop) are these two; the processes themselves default to
# no joint drop (diffusion.Diffusion, flow_matching.FlowMatching), so pipeline.make_process passes it.
JOINT_DROP = 0.1


def gaussian_like(x: torch.Tensor, generator: torch.Generator | None = None, shape=None,
                  dtype=None) -> torch.Tensor:
    """Gaussian noise on x's device; drawn on the generator's device so a CPU generator seeds CUDA runs too."""
    shape = x.shape if shape is None else shape
    device = generator.device if generator is not None else x.device
    return torch.randn(shape, generator=generator, device=device, dtype=dtype or x.dtype).to(x.device)


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 -> float32; float32 and float64 unchanged. The processes' arithmetic runs in this."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def uniform(n: int, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """n uniform numbers in [0, 1) on like's device, drawn on the generator's device."""
    device = generator.device if generator is not None else like.device
    return torch.rand(n, generator=generator, device=device).to(like.device)  # (n,)


def progress_bar(iterable, enabled: bool, desc: str):
    if not enabled:
        return iterable
    from tqdm import tqdm  # imported lazily: only the progress bar needs it
    return tqdm(iterable, desc=desc, mininterval=0.5 if sys.stderr.isatty() else 30.0)


def check_cond(cond: dict | None) -> dict:
    """The present conditions (None values removed); an unknown key is a ValueError, not a silent no-op."""
    cond = {} if cond is None else cond
    unknown = sorted(set(cond) - set(COND_KEYS))
    if unknown:
        raise ValueError(f"cond: unknown key(s) {unknown}; expected any of {list(COND_KEYS)}")
    return {key: value for key, value in cond.items() if value is not None}


# ----------------------------------------------------------------------------- training: dropping

def _check_prob(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} = {p}: expected a probability in [0, 1]")
    return p


def drop_conditions(cond: dict | None, probs: dict, generator: torch.Generator | None = None,
                    joint: float = 0.0) -> dict:
    """Replace conditions by zeros for a random subset of the batch.

    With probability `joint` a sample loses every condition at once (this trains the branch u);
    otherwise each key is dropped independently with probability probs[key] (missing key: never),
    per sample, as FPDM does per module. A dropped condition is an exact zero tensor: the same
    "absent" value that guidance feeds at sampling time.
    """
    cond, joint = check_cond(cond), _check_prob("joint drop probability", joint)
    if not cond:
        return cond
    first = next(iter(cond.values()))
    drop_all = uniform(first.shape[0], first, generator) < joint if joint > 0 else None  # (B,) bool
    out = {}
    for key, value in cond.items():
        p = _check_prob(f"drop_probs[{key!r}]", probs.get(key, 0.0))
        if p > 0.0 or drop_all is not None:
            keep = uniform(value.shape[0], value, generator) >= p if p > 0.0 else torch.ones(
                value.shape[0], dtype=torch.bool, device=value.device)  # (B,)
            keep = keep & ~drop_all if drop_all is not None else keep  # (B,)
            keep = keep.view(-1, *([1] * (value.dim() - 1)))  # (B, 1, ...) to broadcast over the condition
            value = torch.where(keep, value, torch.zeros_like(value))  # where, not multiply: 0 * inf is nan
        out[key] = value
    return out


# ----------------------------------------------------------------------------- sampling: the guided mix

def guidance_branches(cond_keys, w_src: float = 1.0, w_fus: float = 1.0) -> list[tuple[frozenset, float]]:
    """The branches a guided step must evaluate: [(kept condition keys, weight), ...], weights summing to 1.

    Expanding  u + w_src (c_src - u) + w_fus (c_full - c_src)  gives
        (1 - w_src) * u  +  (w_src - w_fus) * c_src  +  w_fus * c_full,
    so a branch whose weight is 0 need not be computed, and branches that keep the same conditions
    (no "fusion" key: c_src == c_full) merge. Consequences:
      - w_src == w_fus == 1 (or no conditions at all): one branch, the plain conditional call;
      - w_src == w_fus == w: the middle branch cancels and it is plain CFG  u + w (c_full - u)
        (FPDM's paper and release use one guidance scale, 2.0, for both: exactly this, 2 branches);
      - w_src != w_fus: three branches, 1.5x the cost of plain CFG;
      - no fusion embedding (RPFM): two branches  u + w_src (c - u).
    """
    present = frozenset(key for key in cond_keys if key in COND_KEYS)
    terms = [(frozenset(), 1.0 - w_src), (present & SOURCE_KEYS, w_src - w_fus), (present, w_fus)]
    merged: dict[frozenset, float] = {}
    for keys, weight in terms:
        merged[keys] = merged.get(keys, 0.0) + weight
    return [(keys, weight) for keys, weight in merged.items() if abs(weight) > 1e-12]


def guided_output(model, x: torch.Tensor, t: torch.Tensor, cond: dict | None,
                  w_src: float = 1.0, w_fus: float = 1.0) -> torch.Tensor:
    """Cumulative classifier-free guidance: all needed branches in ONE batched forward, then mixed.

    x (B, ...), t (B,) float in [0, 1000], cond: dict with any of pose / src_tokens / fusion.
    """
    cond = check_cond(cond)
    t = torch.as_tensor(t, device=x.device)
    t = t.expand(x.shape[0]) if t.dim() == 0 else t  # (B,): a single time is shared by the batch
    branches = guidance_branches(cond.keys(), w_src, w_fus)
    if len(branches) == 1:  # weight 1 on a single branch: no batching, one ordinary call
        keys = branches[0][0]
        return model(x, t, **{n: v if n in keys else torch.zeros_like(v) for n, v in cond.items()})
    k = len(branches)
    x_in = torch.cat([x] * k)  # (k*B, ...)
    t_in = torch.cat([t] * k)  # (k*B,)
    cond_in = {n: torch.cat([v if n in keys else torch.zeros_like(v) for keys, _ in branches])  # (k*B, ...)
               for n, v in cond.items()}
    outs = model(x_in, t_in, **cond_in).chunk(k)  # k x (B, ...)
    return sum(weight * out for (_, weight), out in zip(branches, outs))


# ----------------------------------------------------------------------------- counting network evaluations

class RowCounter:
    """A stand-in network that returns zeros and counts the batch rows it evaluated (NFE x batch)."""

    def __init__(self):
        self.calls, self.rows = 0, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        self.calls, self.rows = self.calls + 1, self.rows + x.shape[0]
        return torch.zeros_like(x)


def nfe_cli(nfe_table_fn, default_steps: int, description: str, argv=None) -> None:
    """The command line of both process files: their NFE table, each figure checked by counting calls."""
    import dataclasses
    from cli import option, parse_config, usage_error  # the project's CLI convention (only when run)
    # the config is made here because its default is the calling file's number of steps
    config_cls = dataclasses.make_dataclass("NFECommand", [("steps", int, option(default_steps, "sampling steps"))])
    cfg, _ = parse_config(config_cls, argv, description)
    try:
        table = nfe_table_fn(cfg.steps)
    except ValueError as error:
        usage_error(str(error))
    print("| setting | NFE per image (nfe()) | counted | forward calls |")
    print("| --- | --- | --- | --- |")
    for label, predicted, counted, calls in table:
        print(f"| {label} | {predicted} | {counted} | {calls} |")
