"""Tests of evaluate.py --sweep (RPFM against FPDM, quality against time): the points of the issue,
one CSV row per point with every column, the NFE counted by wrapping the UNet, the plot and the grid,
and the printed frontier and headline. Timings are never asserted: only that they are there.

    python -m pytest -q tests/test_sweep.py
"""
import csv
import shutil

import pytest
import torch

import evaluate
import metrics
import sweep
import pipeline
import train
from conftest import TRAIN_FAST
from pipeline import Sampling

W = sweep.SWEEP_W
# a short sweep over the tiny checkpoints: each sampler family once, and the NFE each must count
# (steps x evaluations per step x guidance branches; RPFM has no fusion input, so w 2 is 2 branches)
SHORT = {
    ("rpfm", Sampling(1, "euler", W, W)): 2,
    ("rpfm", Sampling(4, "euler", W, W)): 8,
    ("rpfm", Sampling(4, "euler", 1.0, 1.0)): 4,   # no guidance: one branch
    ("rpfm", Sampling(4, "heun", W, W)): 16,       # two evaluations per step
    sweep.FPDM_RELEASE: 40,                      # DDPM 20, w_src = w_fus: plain CFG, 2 branches
    ("fpdm", Sampling(5, "ddim", W, W)): 10,
    ("reflow", Sampling(2, "euler", 1.0, 1.0)): 2,  # the student: guidance baked in, NFE = steps
}


@pytest.fixture(scope="module")
def student(ckpts, tiny_root, tmp_path_factory):
    """A reflow student of the tiny RPFM checkpoint (its teacher, reused): 4 couplings, 2 steps."""
    out = tmp_path_factory.mktemp("reflow")
    for name in ("vae.pt", "rpfm.pt"):
        shutil.copy(ckpts / name, out / name)
    train.run(train.parse_config(["--method", "reflow", "--data", str(tiny_root), "--out", str(out), *TRAIN_FAST,
                                  "--reflow-pairs", "4", "--coupling-steps", "2", "--teacher-steps", "2"]))
    return out / "reflow.pt"


def test_default_points_are_the_issue_s():
    guided = [("rpfm", "euler", n, W) for n in (1, 2, 4, 8, 16, 32)] + [("rpfm", "heun", n, W) for n in (2, 4, 8)]
    unguided = [("rpfm", "euler", n, 1.0) for n in (1, 2, 4, 8, 16, 32)]
    fpdm = [("fpdm", "ddpm", 20, W)] + [("fpdm", "ddim", n, W) for n in (5, 10, 20, 50)]
    student = [("reflow", "euler", n, 1.0) for n in (1, 2, 4)]  # guidance baked in: one branch
    points = [(m, s.sampler, s.steps, s.w_src) for m, s in sweep.SWEEP_POINTS]
    assert sorted(points) == sorted(guided + unguided + fpdm + student) and len(set(points)) == 23
    assert all(s.w_src == s.w_fus for _, s in sweep.SWEEP_POINTS) and W == 2.0
    assert [(m, s.sampler, s.steps) for m, s in sweep.GRID_POINTS] == [
        ("rpfm", "euler", 1), ("rpfm", "euler", 2), ("rpfm", "euler", 4), ("rpfm", "euler", 10),
        ("reflow", "euler", 1), ("reflow", "euler", 2), ("fpdm", "ddpm", 20)]


def _row(method, sampler, steps, w, ms, ssim, sharpness=1.0, part_dE=10.0):
    return {"method": method, "sampler": sampler, "steps": steps, "w_src": w, "w_fus": w, "nfe": 2 * steps,
            "ms_per_image": ms, "ssim": ssim, "psnr": 20.0, "sharpness": sharpness, "part_dE": part_dE}


def test_frontier_and_headline_from_known_rows():
    rows = [_row("fpdm", "ddpm", 20, 2.0, 100.0, 0.700), _row("fpdm", "ddim", 5, 2.0, 30.0, 0.650),
            _row("fpdm", "ddim", 10, 2.0, 50.0, 0.695),
            _row("rpfm", "euler", 1, 2.0, 5.0, 0.640, 0.5), _row("rpfm", "euler", 2, 2.0, 10.0, 0.660, 0.95),
            _row("rpfm", "euler", 4, 2.0, 20.0, 0.695), _row("rpfm", "euler", 8, 2.0, 40.0, 0.705),
            _row("rpfm", "euler", 16, 2.0, 80.0, 0.690), _row("rpfm", "euler", 1, 1.0, 2.5, 0.698, 0.4),
            _row("reflow", "euler", 1, 1.0, 2.0, 0.670), _row("reflow", "euler", 2, 1.0, 4.0, 0.692, 1.0, 12.0),
            _row("reflow", "euler", 4, 1.0, 8.0, 0.692)]
    frontier = sweep.quality_frontier(rows)
    assert [(r["method"], r["steps"], r["w_src"]) for r in frontier] == [
        ("reflow", 1, 1.0), ("rpfm", 1, 1.0), ("rpfm", 8, 2.0)]
    spread = {"fpdm ddpm 20 w2": dict(rows[0], ssim=0.703, sharpness=1.05, part_dE=10.5)}
    lines = sweep.headline(rows, spread)
    assert "SSIM 0.7000, sharpness 1.000, part ΔE 10.00 at 100.00 ms/image" in lines[0]
    assert "spread: SSIM 0.0030 (tolerance 0.01), sharpness 4.8% (tolerance 10%), part ΔE 4.8%" in lines[0]
    # FPDM at its best: DDIM 10 qualifies (0.695, within 0.01) and is twice as fast as its release
    assert "FPDM's fastest qualifying point: fpdm ddim 10 w2" in lines[2]
    # RPFM: the blurry unguided 1-step point (sharpness 0.4) does not count; Euler 4 does, 50 / 20 ms
    assert "RPFM's fastest qualifying point: rpfm euler 4 w2" in lines[3] and "2.5x less time" in lines[3]
    # the student's 2 steps lose the colours (part ΔE 12 > 110% of 10): its 4 steps qualify
    assert "reflow euler 4 w1" in lines[4] and "6.2x less time" in lines[4]
    assert "falls apart at 2 steps" in lines[5]  # 0.660 < 0.705 - 0.02; 4 steps (0.695) holds
    assert "blurs at 1 steps and below: sharpness 0.500" in lines[6]  # under 90% of 16 steps' 1.0
    worse = [dict(r, ssim=0.5) if r["method"] == "rpfm" else r for r in rows]
    assert "RPFM's fastest qualifying point: none (its best SSIM:" in sweep.headline(worse)[3]


def test_sweep_writes_rows_counts_nfe_plots_and_prints_the_headline(ckpts, student, tmp_path, monkeypatch,
                                                                     capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))  # no LPIPS / FID weights: notes
    monkeypatch.setattr(metrics, "default_lpips_heads_path", lambda net: None)
    monkeypatch.setattr(sweep, "SWEEP_POINTS", tuple(SHORT))  # the default list is tested above
    out = tmp_path / "sweep"
    result = evaluate.main(["--sweep", "--rpfm-ckpt", str(ckpts / "rpfm.pt"), "--fpdm-ckpt",
                            str(ckpts / "fpdm.pt"), "--reflow-ckpt", str(student), "--limit", "4",
                            "--batch-size", "4", "--device", "cpu", "--sweep-out", str(out)])
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == sweep.SWEEP_COLUMNS
        rows = list(reader)
    assert len(rows) == len(SHORT) + len(result["spread"]) and len(result["rows"]) == len(SHORT)
    for row, ((method, s), nfe) in zip(rows, SHORT.items()):
        assert (row["method"], row["sampler"], int(row["steps"])) == (method, s.sampler, s.steps)
        assert float(row["w_src"]) == s.w_src and float(row["nfe"]) == nfe  # counted, not computed
        assert int(row["pairs"]) == 4 and int(row["batch"]) == 4 and row["device"].startswith("cpu")
        assert float(row["ms_per_image"]) > 0 and float(row["images_per_s"]) > 0
        assert float(row["ms_per_image_total"]) > 0  # the generation pass; ms_per_image: timed in turns
        assert 0 < float(row["ssim"]) <= 1 and float(row["sharpness"]) > 0 and row["psnr"]
        assert row["lpips"] == row["fid"] == ""  # their weights are absent: empty, not made up
        assert row["checkpoint"].endswith(f"{method}.pt") and int(row["train_step"]) == 2
    for name in ("quality_vs_time.png", "grid.png"):
        assert (out / name).stat().st_size > 0
    printed = capsys.readouterr().out
    assert "| method | sampler |" in printed and "HEADLINE: reference FPDM release (fpdm ddpm 20 w2): SSIM" in printed
    assert "seed-to-seed spread: SSIM" in printed  # the release point, generated again from seed 1
    for who in ("FPDM's", "RPFM's", "the reflow student's"):
        assert f"HEADLINE: {who} fastest qualifying point:" in printed
    assert "HEADLINE: RPFM guided Euler falls apart at" in printed and "HEADLINE: RPFM guided Euler blurs at" in printed
    assert "baseline: copy source" in printed and "baseline: mean train image" in printed
    assert sweep.CEILING_ROW in printed and "baseline: the source's own part colour" in printed
    for row in rows[:len(SHORT)]:  # both halves of the task in every row
        assert float(row["part_dE"]) > 0 and float(row["src_sens"]) >= 0 and row["torso_dE"]


def test_timing_takes_the_points_in_turns(ckpts, monkeypatch):
    """ms_per_image comes from rounds that visit every point once (a slow phase of a shared machine
    then hits all points alike): the calls go point 1, 2, 3, point 1, 2, 3, ... with one warm-up round."""
    points = [(m, s) for m, s in SHORT if m != "reflow"][:3] + [sweep.FPDM_RELEASE]
    cfg = evaluate.EvalConfig(rpfm_ckpt=str(ckpts / "rpfm.pt"), fpdm_ckpt=str(ckpts / "fpdm.pt"), limit=4,
                              batch_size=4, device="cpu")
    opened = sweep.open_sweep(cfg, {"rpfm": cfg.rpfm_ckpt, "fpdm": cfg.fpdm_ckpt}, torch.device("cpu"))
    calls, real = [], pipeline.generate
    def recording(gen, source, pose, sampling, *args, **kwargs):
        calls.append((gen.method, sampling, source.shape[0]))
        return real(gen, source, pose, sampling, *args, **kwargs)
    monkeypatch.setattr(pipeline, "generate", recording)
    times = sweep.interleaved_times(opened, points, cfg)
    assert calls == [(m, s, 4) for _ in range(sweep.TIMING_ROUNDS + 1) for m, s in points]
    assert len(times) == len(points) and all(t > 0 for t in times)


def test_sweep_refuses_swapped_checkpoints(ckpts, tmp_path):
    cfg = evaluate.EvalConfig(sweep=True, rpfm_ckpt=str(ckpts / "fpdm.pt"), fpdm_ckpt=str(ckpts / "rpfm.pt"),
                              device="cpu", sweep_out=str(tmp_path))
    with pytest.raises(ValueError, match="holds a .rpfm. model, expected fpdm"):
        sweep.run_sweep(cfg)
