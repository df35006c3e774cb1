"""Tests of train.py: every method for a few steps on a tiny synthetic set, the stage chain,
checkpoint round trip, resume equivalence, DistributedDataParallel with 2 CPU processes, and
one-line errors for bad input.

    python -m pytest -q tests/test_train.py
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import data
import distributed
import pipeline
import train
import unet as unet_lib

REPO = Path(__file__).resolve().parents[1]

# 32 px images (latents 8x8) and batches of 4 keep every run to seconds on 2 cores.
FAST = ["--image-size", "32", "--batch-size", "4", "--vae-batch-size", "4", "--num-workers", "0", "--log-every", "1",
        "--vae-steps", "2", "--fusion-steps", "2", "--steps", "2", "--sample-every", "2",
        "--ckpt-every", "2", "--grid-rows", "2", "--grid-steps", "2", "--warmup", "1"]


def run_train(root, out, *extra):
    return train.run(train.parse_config(["--data", str(root), "--out", str(out), *FAST, *extra]))


@pytest.fixture(scope="module")
def fpdm_run(tiny_root, tmp_path_factory):
    """One fpdm run trains the whole chain: VAE -> fusion -> latent diffusion."""
    out = tmp_path_factory.mktemp("fpdm")
    run_train(tiny_root, out, "--method", "fpdm")
    return out


def test_fpdm_chains_vae_and_fusion_stages(fpdm_run):
    for stage in ("vae", "fusion", "fpdm"):
        ckpt = train.load_checkpoint(fpdm_run / f"{stage}.pt", stage)
        assert ckpt["step"] == 2 and ckpt["version"] == pipeline.CKPT_VERSION
        assert set(ckpt) >= {"model", "ema", "optimizer", "config", "step", "rng"}
    full = train.load_checkpoint(fpdm_run / "fpdm.pt")
    assert "vae" in full and "fusion" in full  # the file alone can sample
    assert (fpdm_run / "fpdm_0000002.png").is_file() and (fpdm_run / "vae_0000002.png").is_file()


def test_rpfm_reuses_the_vae_of_an_earlier_run(fpdm_run, tiny_root, capsys):
    vae_before = (fpdm_run / "vae.pt").stat().st_mtime_ns
    run_train(tiny_root, fpdm_run, "--method", "rpfm")
    assert "[vae] reusing" in capsys.readouterr().out
    assert (fpdm_run / "vae.pt").stat().st_mtime_ns == vae_before
    ckpt = train.load_checkpoint(fpdm_run / "rpfm.pt", "rpfm")
    assert "fusion" not in ckpt and ckpt["config"]["model"]["fusion_dim"] == 0


def test_fusion_method_reports_retrieval(fpdm_run, tiny_root, capsys):
    run_train(tiny_root, fpdm_run, "--method", "fusion")
    out = capsys.readouterr().out
    assert "source alone" in out and "R@1" in out


def test_fusion_loss_both_trains_each_loss_and_prints_one_table(fpdm_run, tiny_root, tmp_path, capsys):
    run_train(tiny_root, tmp_path, "--method", "fusion", "--fusion-loss", "both", "--vae-ckpt",
              str(fpdm_run / "vae.pt"))
    for loss in train.FUSION_LOSSES:
        ckpt = train.load_checkpoint(tmp_path / f"fusion_{loss}" / "fusion.pt", "fusion")
        assert ckpt["config"]["train"]["fusion_loss"] == loss
        assert ckpt["config"]["model"]["source_enhanced"] == (loss == "source_enhanced")
    table = capsys.readouterr().out.split("[fusion] retrieval of the true target")[1]
    for row in ("baseline InfoNCE: source alone", "baseline InfoNCE: fused",
                "source_enhanced InfoNCE: source alone", "source_enhanced InfoNCE: fused"):
        assert row in table
    with pytest.raises(ValueError, match="--fusion-loss both .* needs --method fusion"):
        train.parse_config(["--method", "fpdm", "--fusion-loss", "both"])


def test_rpfm_with_use_fusion_conditions_on_the_fusion_embedding(fpdm_run, tiny_root, tmp_path):
    """The process x fusion 2x2 of the FPDM diagnosis: flow matching with FPDM's fusion input."""
    run_train(tiny_root, tmp_path, "--method", "rpfm", "--use-fusion", "--vae-ckpt", str(fpdm_run / "vae.pt"),
              "--fusion-ckpt", str(fpdm_run / "fusion.pt"))
    ckpt = train.load_checkpoint(tmp_path / "rpfm.pt", "rpfm")
    assert "fusion" in ckpt and ckpt["config"]["model"]["fusion_dim"] > 0
    gen = pipeline.Generator.from_checkpoint(tmp_path / "rpfm.pt")
    assert gen.fusion is not None and pipeline.build_cond(gen.unet, gen.fusion, *[torch.zeros(
        1, 3, 32, 32)] * 2, keypoints=(torch.zeros(1, 18, 2),) * 2).keys() == {"pose", "src_tokens", "fusion"}


def test_evaluate_scores_retrieval_of_a_fusion_checkpoint(fpdm_run, tiny_root, tmp_path):
    import evaluate

    rows = evaluate.main(["--fusion-ckpt", str(fpdm_run / "fusion.pt"), "--data", str(tiny_root),
                          "--out", str(tmp_path / "r.json")])
    assert set(rows) == {"source alone", "fused"}
    for row in rows.values():
        assert 0 <= row["R@1"] <= row["R@3"] <= row["R@5"] <= 1 and row["avg_rank"] >= 1
    assert json.loads((tmp_path / "r.json").read_text())["retrieval"] == rows


def test_losses_are_finite_and_training_moves_weights(fpdm_run, tiny_root):
    ckpt = train.load_checkpoint(fpdm_run / "fpdm.pt")
    fresh = unet_lib.UNet(ckpt["config"]["model"]).state_dict()
    moved = [k for k, v in ckpt["model"].items() if not torch.equal(v, fresh[k])]
    assert moved, "two optimiser steps changed no weight"
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_checkpoint_round_trip_gives_the_same_model(fpdm_run):
    gen = pipeline.Generator.from_checkpoint(str(fpdm_run / "fpdm.pt"), use_ema=True, device="cpu")
    ckpt = train.load_checkpoint(fpdm_run / "fpdm.pt")
    again = unet_lib.UNet(ckpt["config"]["model"])
    again.load_state_dict(ckpt["ema"])
    # frozen as the Generator freezes its UNet: on some CPUs (an Intel Xeon here) the convolutions take
    # another kernel when no weight requires grad, and the two results differ in the 7th digit
    again.eval().requires_grad_(False)
    inputs = again.example_inputs(batch_size=2)
    with torch.no_grad():
        assert torch.equal(gen.unet(**inputs), again(**inputs))


def test_resume_matches_an_uninterrupted_run(fpdm_run, tiny_root, tmp_path):
    vae = str(fpdm_run / "vae.pt")
    common = ["--method", "rpfm", "--vae-ckpt", vae, "--flip", "--ckpt-every", "1"]
    run_train(tiny_root, tmp_path / "straight", *common, "--steps", "4")
    run_train(tiny_root, tmp_path / "resumed", *common, "--steps", "2")
    run_train(tiny_root, tmp_path / "resumed", *common, "--steps", "4", "--resume")
    a = train.load_checkpoint(tmp_path / "straight" / "rpfm.pt")
    b = train.load_checkpoint(tmp_path / "resumed" / "rpfm.pt")
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"


def test_ctrl_c_saves_the_finished_steps_and_resume_continues_exactly(fpdm_run, tiny_root,
                                                                      tmp_path, monkeypatch):
    common = ["--method", "rpfm", "--vae-ckpt", str(fpdm_run / "vae.pt"), "--steps", "3"]
    run_train(tiny_root, tmp_path / "straight", *common)
    real_lr_at = train.lr_at

    def interrupt_at_step_2(step, *args):
        if step == 2:
            raise KeyboardInterrupt  # as if Ctrl-C arrived while step 3 was starting
        return real_lr_at(step, *args)

    monkeypatch.setattr(train, "lr_at", interrupt_at_step_2)
    argv = ["--data", str(tiny_root), "--out", str(tmp_path / "cut"), *FAST, *common]
    with pytest.raises(SystemExit, match="interrupted"):
        train.main(argv)
    assert train.load_checkpoint(tmp_path / "cut" / "rpfm.pt")["step"] == 2
    monkeypatch.setattr(train, "lr_at", real_lr_at)
    run_train(tiny_root, tmp_path / "cut", *common, "--resume")
    a = train.load_checkpoint(tmp_path / "straight" / "rpfm.pt")
    b = train.load_checkpoint(tmp_path / "cut" / "rpfm.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_batches_resume_where_they_stopped_and_split_over_ranks():
    straight = [b for b, _ in zip(distributed.EpochBatches(10, 4, seed=3, flip=True), range(7))]
    later = [b for b, _ in zip(distributed.EpochBatches(10, 4, seed=3, start_step=4, flip=True), range(3))]
    assert straight[4:] == later  # 2 batches an epoch: this crosses epoch boundaries
    assert all(len(b) == 4 and len(set(i % 10 for i in b)) == 4 for b in straight)  # no repeats
    ranks = [next(iter(distributed.EpochBatches(10, 4, seed=3, rank=r, world=2, flip=True))) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 2 and sorted(ranks[0] + ranks[1]) == sorted(straight[0])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_with_two_cpu_processes(tiny_root, tmp_path):
    """The whole fpdm chain (VAE, fusion, diffusion) under torchrun with gloo on 2 CPU processes."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           "train.py", "--method", "fpdm",
           "--data", str(tiny_root), "--out", str(tmp_path), *FAST, "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 ranks hold identical weights: True" in done.stdout
    for stage in ("vae", "fusion", "fpdm"):
        assert train.load_checkpoint(tmp_path / f"{stage}.pt", stage)["step"] == 2
    assert done.stdout.count(" parameters for ") == 3  # rank 0 alone reports each stage


@pytest.mark.parametrize("argv, expected", [
    (["--method", "gan"], "invalid choice: 'gan'"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
    (["--steps", "many"], "invalid int value"),
    (["--data", "/no/such/folder"], "/no/such/folder"),
    (["--vae-ckpt", "/no/such.pt"], "/no/such.pt does not exist"),
    (["--device", "tpu9"], "--device 'tpu9'"),
    (["--bench-size", "big"], "--bench-size 'big'"),
    (["--image-size", "48"], "tiny48 for 48 px"),  # refused before the VAE trains, not after
])
def test_bad_input_is_one_line_and_nonzero(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    message = str(exit_info.value.code)
    assert exit_info.value.code != 0 and expected in message and "\n" not in message.strip()


def test_48_px_trains_with_the_tiny48_unet(tiny_root, tmp_path):
    """The resolution between the main job's 32 px and 64 px: a 12x12 latent, three UNet levels."""
    run_train(tiny_root, tmp_path, "--method", "rpfm", "--image-size", "48", "--unet", "tiny48")
    ckpt = train.load_checkpoint(tmp_path / "rpfm.pt", "rpfm")
    unet_cfg = unet_lib.make_config(ckpt["config"]["model"])
    assert (unet_cfg.image_size, unet_cfg.latent_size, unet_cfg.channel_mult) == (48, 12, (1, 2, 4))


def test_wrong_method_and_corrupt_checkpoints_are_refused(fpdm_run, tmp_path):
    with pytest.raises(ValueError, match="holds a 'vae' model, expected fpdm or rpfm"):
        train.load_checkpoint(fpdm_run / "vae.pt", ("fpdm", "rpfm"))
    broken = tmp_path / "broken.pt"
    broken.write_bytes((fpdm_run / "rpfm.pt").read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt"):
        train.load_checkpoint(broken)


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    target = tmp_path / "x.pt"
    train.save_checkpoint(target, {"method": "vae", "step": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError):
        train.save_checkpoint(target, {"method": "vae", "step": 2})
    assert train.load_checkpoint(target)["step"] == 1  # the old file is intact


@pytest.mark.parametrize("method", ["vae", "fusion", "fpdm", "rpfm", "reflow"])
def test_one_training_step_of_each_method_under_cpu_bf16_autocast(method, tiny_root, tmp_path):
    """CPU bf16 autocast exercises the casts CUDA autocast does (no GPU has run this code)."""
    model = run_train(tiny_root, tmp_path, "--method", method, "--precision", "bf16",
                      "--steps", "1", "--vae-steps", "1", "--fusion-steps", "1", "--sample-every", "1",
                      "--ckpt-every", "1", "--teacher-steps", "1", "--reflow-pairs", "4", "--coupling-steps", "1")
    ckpt = train.load_checkpoint(tmp_path / f"{method}.pt", method)
    assert ckpt["step"] == 1 and ckpt["config"]["train"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in ckpt["model"].values() if v.is_floating_point())
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert model is not None


def test_latents_reach_the_process_in_float32_under_autocast(tiny_root, tmp_path, monkeypatch):
    """train.py hands the processes float32 latents even when the VAE runs in bf16."""
    import diffusion
    seen = []
    original = diffusion.Diffusion.loss

    def spy(self, model, x0, cond, generator=None):
        seen.append(x0.dtype)
        return original(self, model, x0, cond, generator)

    monkeypatch.setattr(diffusion.Diffusion, "loss", spy)
    run_train(tiny_root, tmp_path, "--method", "fpdm", "--precision", "bf16", "--steps", "1",
              "--vae-steps", "1", "--fusion-steps", "1", "--sample-every", "1", "--ckpt-every", "1")
    assert seen == [torch.float32]


def test_reflow_end_to_end_couplings_are_the_teachers_samples(fpdm_run, tiny_root, tmp_path, capsys):
    """--method reflow on 4 pairs: teacher trained on the way, couplings exactly the teacher's guided
    ODE for the stored z, resumable; the student file samples like any checkpoint, at NFE = steps."""
    args = ["--method", "reflow", "--vae-ckpt", str(fpdm_run / "vae.pt"), "--teacher-steps", "2",
            "--reflow-pairs", "4", "--coupling-steps", "3"]
    run_train(tiny_root, tmp_path, *args)
    teacher = pipeline.load_checkpoint(tmp_path / "rpfm.pt", "rpfm")
    assert teacher["step"] == 2
    state = pipeline.load_checkpoint(tmp_path / "reflow_couplings.pt", "couplings")
    assert state["done"] == len(state["index"]) == 4 and state["teacher"]["coupling_steps"] == 3
    gen = pipeline.Generator.from_checkpoint(tmp_path / "rpfm.pt")  # the teacher's EMA weights
    pairs = distributed.FlipIndexed(data.PairDataset(tiny_root, "train", 32))
    batch = torch.utils.data.default_collate([pairs[int(k)] for k in state["index"]])
    cond = pipeline.build_cond(gen.unet, None, batch["source"], batch["target_pose"],
                               keypoints=pipeline.batch_keypoints(batch))
    expected = train.flow_matching.couplings(gen.process, gen.unet, state["noise"], cond, steps=3)
    assert torch.allclose(state["x1"], expected, atol=1e-5)
    # resumable: a file cut off after 2 couplings is completed to the same values
    cut = dict(state, done=2, x1=torch.cat([state["x1"][:2], torch.zeros_like(state["x1"][2:])]))
    pipeline.save_checkpoint(tmp_path / "reflow_couplings.pt", cut)
    run_train(tiny_root, tmp_path, *args)
    again = pipeline.load_checkpoint(tmp_path / "reflow_couplings.pt", "couplings")
    assert again["done"] == 4 and torch.allclose(again["x1"], state["x1"], atol=1e-5)
    student = pipeline.load_checkpoint(tmp_path / "reflow.pt", "reflow")
    assert student["step"] == 2 and student["teacher"]["step"] == 2
    import sample
    capsys.readouterr()
    sample.main(["--ckpt", str(tmp_path / "reflow.pt"), "--data", str(tiny_root), "--out", str(tmp_path / "s"),
                 "--limit", "2", "--warmup", "0"])
    row = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")][-1]
    assert (row["method"], row["sampler"], row["steps"], row["w_src"], row["nfe"]) == ("reflow", "euler", 2, 1.0, 2)
