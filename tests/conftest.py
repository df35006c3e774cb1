"""Shared pytest set-up: two torch threads (the CI machine has two cores) and one tiny
built-in benchmark, synthesised once per session and reused by every test file.

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


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """A 64x44 benchmark of 12 clothing items (about 45 images) in the csv layout."""
    import data

    root = tmp_path_factory.mktemp("benchmark") / "tiny"
    data.synthesize(root, size=(64, 44), seed=0, max_items=12)
    return root
