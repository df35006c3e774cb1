"""Shared pytest set-up: two torch threads (the CI machine has two cores), one tiny built-in
benchmark synthesised once per session, and tiny fpdm / rpfm checkpoints trained on it once.

    python -m pytest -q
"""
import os
import sys
from pathlib import Path

# before torch: OpenMP threads that spin while idle starve everything else on a 2-core machine
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

# the project is flat (data.py, vae.py, ... at the top): make it importable under plain `pytest`
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(2)

# 32 px images (8x8 latents), batches of 4 and two steps per stage: seconds on 2 cores
TRAIN_FAST = ["--image-size", "32", "--batch-size", "4", "--vae-batch-size", "4", "--num-workers", "0",
              "--vae-steps", "2", "--fusion-steps", "2", "--steps", "2", "--grid-steps", "2", "--warmup", "1"]


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A 64x44 benchmark of 12 clothing items (about 45 images) in the csv layout."""
    import data

    root = tmp_path_factory.mktemp("benchmark") / "tiny"
    data.synthesize(root, size=(64, 44), seed=0, max_items=12)
    return root


@pytest.fixture(scope="session")
def ckpts(tiny_root, tmp_path_factory) -> Path:
    """A folder with finished tiny fpdm.pt and rpfm.pt sharing one VAE (only plumbing is tested)."""
    import train  # tests may use the scripts; the library files never do

    out = tmp_path_factory.mktemp("ckpts")
    for method in ("fpdm", "rpfm"):
        train.run(train.parse_config(["--method", method, "--data", str(tiny_root), "--out", str(out),
                                      *TRAIN_FAST]))
    return out


@pytest.fixture(scope="session")
def sign_root(tmp_path_factory) -> Path:
    """A 64x52 signer benchmark in the phoenix layout: one training sequence in two looks (four
    frames each), one whole test video, drawn from the real signing poses of assets/sign/."""
    import sign_data

    root = tmp_path_factory.mktemp("sign") / "signers"
    sign_data.synthesize_sign(root, size=(64, 52), looks=2, frames_per_look=3, max_sequences=1)
    return root


@pytest.fixture(scope="session")
def sign_ckpt(sign_root, tmp_path_factory) -> Path:
    """A tiny rpfm.pt trained on the signer benchmark (plumbing only: two steps per stage)."""
    import train

    out = tmp_path_factory.mktemp("sign_ckpt")
    train.run(train.parse_config(["--method", "rpfm", "--data", str(sign_root), "--out", str(out), *TRAIN_FAST]))
    return out / "rpfm.pt"
