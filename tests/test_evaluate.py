"""Tests of metrics.py, scoring.py and evaluate.py: each metric against a closed form or a second, slower computation;
`python sample.py` then `python evaluate.py`, both without flags; baselines on the generated pairs.

    pytest -q tests/test_evaluate.py

Networks are randomly initialised (no weight file is read), so LPIPS/FID values only exercise
the code paths; the checks use properties that hold for any weights (identical inputs give 0).
"""
import functools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import appearance
import evaluate
import metrics as metrics_lib
import scoring
from metrics import (LPIPS, InceptionFeatures, Metrics, feature_stats, frechet_distance,
                     frechet_distance_to_features, psnr, ssim)
from scoring import match_files


def _ssim_slow(a: np.ndarray, b: np.ndarray, size=11, sigma=1.5) -> float:
    """SSIM of two (C, H, W) arrays with explicit loops over every valid window position."""
    r = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (r / sigma) ** 2)
    w = np.outer(g, g) / np.outer(g, g).sum()  # (K, K)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for ch in range(a.shape[0]):
        for i in range(a.shape[1] - size + 1):
            for j in range(a.shape[2] - size + 1):
                x, y = a[ch, i:i + size, j:j + size], b[ch, i:i + size, j:j + size]
                mx, my = (w * x).sum(), (w * y).sum()
                vx, vy = (w * (x - mx) ** 2).sum(), (w * (y - my) ** 2).sum()
                cov = (w * (x - mx) * (y - my)).sum()
                values.append((2 * mx * my + c1) * (2 * cov + c2) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
    return float(np.mean(values))


def test_ssim_is_one_for_identical_and_falls_with_noise():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 40, 32)
    assert torch.allclose(ssim(x, x), torch.ones(2), atol=1e-6)
    values = [ssim(x, (x + s * torch.randn_like(x)).clamp(0, 1)).mean().item() for s in (0.02, 0.1, 0.3)]
    assert 1 > values[0] > values[1] > values[2]


def test_ssim_matches_explicit_loops():
    rng = np.random.default_rng(1)
    a = rng.random((3, 14, 13))
    b = np.clip(a + 0.2 * rng.standard_normal(a.shape), 0, 1)
    fast = ssim(torch.from_numpy(a)[None], torch.from_numpy(b)[None])  # float64 path
    assert fast.shape == (1,)
    assert abs(fast.item() - _ssim_slow(a, b)) < 1e-10


def test_psnr_of_a_constant_offset_is_20_db():
    a = torch.full((2, 3, 16, 16), 0.3)
    assert torch.allclose(psnr(a, a + 0.1), torch.full((2,), 20.0), atol=1e-4)  # MSE 0.01
    assert psnr(a, a).tolist() == pytest.approx([100.0, 100.0])  # the documented floor


def test_images_in_minus_one_one_are_rejected():
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ssim(x, x)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    torch.manual_seed(0)
    mu1, mu2 = torch.randn(6), torch.randn(6)
    s1, s2 = torch.rand(6) + 0.1, torch.rand(6) + 0.1
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * (s1 * s2).sqrt()).sum()
    got = frechet_distance(mu1, torch.diag(s1), mu2, torch.diag(s2))
    assert got == pytest.approx(expected.item(), rel=1e-6)


def test_frechet_distance_agrees_with_a_general_eigen_solver():
    # second way: tr sqrt(S1 S2) from the complex eigenvalues of the non-symmetric product
    torch.manual_seed(1)
    a, b = torch.randn(40, 8, dtype=torch.float64), torch.randn(40, 8, dtype=torch.float64) * 2 + 1
    (mu1, s1), (mu2, s2) = feature_stats(a), feature_stats(b)
    tr = torch.linalg.eigvals(s1 @ s2).sqrt().sum().real
    expected = ((mu1 - mu2) ** 2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * tr
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected.item(), rel=1e-8)


def test_frechet_distance_with_singular_covariances_is_finite():
    # 10 samples in 64 dimensions: rank-9 covariances, the usual FID situation on a small test set
    torch.manual_seed(2)
    f = torch.randn(10, 64)
    mu, sigma = feature_stats(f)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    mu2, sigma2 = feature_stats(f + 0.01 * torch.randn(10, 64))
    value = frechet_distance(mu, sigma, mu2, sigma2)
    assert math.isfinite(value) and value >= 0
    assert math.isfinite(frechet_distance(mu, sigma, mu2, torch.zeros(64, 64)))  # a constant set


@pytest.mark.parametrize("n1", [5, 30])  # fewer samples than dimensions (the N x N route), and more
def test_frechet_distance_from_features_equals_the_covariance_route(n1):
    torch.manual_seed(3)
    f1, f2 = torch.randn(n1, 16, dtype=torch.float64), torch.randn(9, 16, dtype=torch.float64) + 0.5
    stats2 = feature_stats(f2)
    expected = frechet_distance(*feature_stats(f1), *stats2)
    # note: on singular covariances the D x D route takes square roots of rounding-level
    # eigenvalues (~1e-16), which costs it about sqrt(1e-16) = 1e-8 of accuracy
    assert frechet_distance_to_features(f1, *stats2) == pytest.approx(expected, rel=1e-6)


def _write_images(folder, names, size=(40, 32), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)


def test_match_files_pairs_by_target_stem_and_allows_extra_real(tmp_path):
    _write_images(tmp_path / "real", ["a.jpg", "b.png", "c.png"])
    _write_images(tmp_path / "gen", ["x___a.png", "y___b.png", "c.png"])
    pairs = match_files(tmp_path / "gen", tmp_path / "real")
    assert [(g.name, r.name) for g, r in pairs] == [("c.png", "c.png"), ("x___a.png", "a.jpg"),
                                                    ("y___b.png", "b.png")]


def test_match_files_reports_generated_images_without_ground_truth(tmp_path):
    _write_images(tmp_path / "real", ["a.png"])
    _write_images(tmp_path / "gen", ["x___a.png", "x___zz.png", "q.png"])
    with pytest.raises(ValueError, match=r"2 of 3 generated images have no ground truth.*q\.png"):
        match_files(tmp_path / "gen", tmp_path / "real")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        match_files(tmp_path / "nowhere", tmp_path / "real")


def test_lpips_random_network_zero_on_identical_and_heads_round_trip(tmp_path):
    torch.manual_seed(0)
    model = LPIPS("alex", random_init=True)
    x, y = torch.rand(2, 3, 48, 40), torch.rand(2, 3, 48, 40)
    assert torch.equal(model(x, x), torch.zeros(2))
    assert (model(x, y) > 0).all()
    # the lpips package file format: lin{k}.model.1.weight; the backbone: torchvision's AlexNet keys
    heads = {f"lin{k}.model.1.weight": h.weight for k, h in enumerate(model.heads)}
    torch.save(heads, tmp_path / "alex.pth")
    torch.save(_features_state(model), tmp_path / "alexnet.pth")
    loaded = LPIPS("alex", heads_path=tmp_path / "alex.pth", backbone_path=tmp_path / "alexnet.pth")
    assert torch.allclose(loaded(x, y), model(x, y))
    torch.save({"lin0.weight": heads["lin0.model.1.weight"]}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="lin0.model.1.weight"):
        LPIPS("alex", heads_path=tmp_path / "bad.pth", backbone_path=tmp_path / "alexnet.pth")


def _features_state(model: LPIPS) -> dict:
    """The slices' parameters under torchvision's `features.<index>` numbering."""
    out = {}
    for block in model.slices:
        for name, module in block.named_children():  # slices keep the original indices as names
            for pname, p in module.named_parameters():
                out[f"{name}.{pname}"] = p
    return {f"features.{k}": v for k, v in out.items()}


def test_inception_features_and_fid_of_identical_sets():
    torch.manual_seed(0)
    net = InceptionFeatures(random_init=True, input_size=75)  # 75: the smallest input InceptionV3 takes
    x = torch.rand(3, 3, 40, 32)
    f = net(x)
    assert f.shape == (3, 2048)
    assert frechet_distance_to_features(f, *feature_stats(f)) == pytest.approx(0.0, abs=1e-6)


def test_tf_pool_branch_differs_from_torchvision_only_at_the_border():
    torch.manual_seed(0)
    block = torchvision_inception_a()
    x = torch.rand(1, 192, 9, 9)
    plain, tf = block(x), metrics_lib._TFPoolBranch(block, max_pool=False)(x)
    k = block.branch_pool.conv.out_channels
    assert torch.equal(plain[:, :-k], tf[:, :-k])  # the other branches are untouched
    assert torch.allclose(plain[..., 1:-1, 1:-1], tf[..., 1:-1, 1:-1], atol=1e-6)  # no padding inside
    assert not torch.allclose(plain[:, -k:, 0, 0], tf[:, -k:, 0, 0])  # a corner averages 4, not 9


def torchvision_inception_a():
    import torchvision
    return torchvision.models.inception.InceptionA(192, pool_features=32).eval()


def test_inception_recognises_a_pytorch_fid_weight_file(tmp_path):
    torch.manual_seed(0)
    net = InceptionFeatures(random_init=True)
    state = dict(net.net.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    torch.save(state, tmp_path / "pt_inception.pth")
    loaded = InceptionFeatures(tmp_path / "pt_inception.pth")
    assert loaded.kind.startswith("pytorch-fid")
    assert isinstance(loaded.net.Mixed_7c, metrics_lib._TFPoolBranch) and loaded.net.Mixed_7c.max_pool
    assert not isinstance(net.net.Mixed_7c, metrics_lib._TFPoolBranch)  # torchvision's own blocks


def test_missing_default_weights_become_notes_and_named_files_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(metrics_lib, "default_lpips_heads_path", lambda net: None)
    metrics = metrics_lib.build_metrics(evaluate.EvalConfig(device="cpu"))
    assert metrics.lpips is None and metrics.inception is None
    assert any(n.startswith("LPIPS left out") for n in metrics.notes)
    assert any(n.startswith("FID left out") and "TORCH_HOME" in n for n in metrics.notes)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        metrics_lib.build_metrics(evaluate.EvalConfig(device="cpu", fid_weights=str(tmp_path / "missing.pth")))


def test_cli_end_to_end_on_identical_folders(tmp_path, capsys, monkeypatch):
    # Inception at 75x75 instead of 299x299 keeps the test fast; the code path is the same
    monkeypatch.setattr(metrics_lib, "InceptionFeatures", functools.partial(InceptionFeatures, input_size=75))
    _write_images(tmp_path / "real", ["a.png", "b.png", "extra.png"], size=(48, 36))
    (tmp_path / "gen").mkdir()
    for source, target in [("s1", "a"), ("s2", "b")]:  # generated = ground truth
        (tmp_path / "gen" / f"{source}___{target}.png").write_bytes((tmp_path / "real" / f"{target}.png").read_bytes())
    out = tmp_path / "m.json"
    evaluate.main(["--generated", str(tmp_path / "gen"), "--real", str(tmp_path / "real"),
                   "--size", "40x32", "--out", str(out), "--device", "cpu", "--batch-size", "4",
                   "--random-init-for-testing", "--fid-ref", str(tmp_path / "gen")])
    row = json.loads(out.read_text())["rows"]["gen"]
    assert row["n_images"] == 2 and row["ssim"] == pytest.approx(1.0) and row["lpips"] == 0.0
    assert row["psnr"] == pytest.approx(100.0) and row["fid"] == pytest.approx(0.0, abs=1e-4)
    assert row["fid_ref"] == pytest.approx(0.0, abs=1e-4)  # the reference set is the same images
    assert row["sharpness"] == pytest.approx(1.0)  # as sharp as the real images: they are the same
    printed = capsys.readouterr().out
    assert "mean nothing" in printed and "SSIM" in printed and "FID" in printed


def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys):
    _write_images(tmp_path / "real", ["a.png"])
    _write_images(tmp_path / "gen", ["x___b.png"])
    for argv in (["--generated", str(tmp_path / "gen"), "--real", str(tmp_path / "real")],
                 ["--generated", str(tmp_path / "nope"), "--real", str(tmp_path / "real")],
                 ["--generated", str(tmp_path / "gen"), "--real", str(tmp_path / "real"), "--size", "big"],
                 ["--baselines"]):
        with pytest.raises(SystemExit) as exit_info:
            evaluate.main(argv + ["--random-init-for-testing", "--out", str(tmp_path / "o.json")])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_baselines_score_copy_source_and_mean_image(tiny_root):
    torch.manual_seed(0)
    metrics = Metrics(LPIPS(random_init=True), InceptionFeatures(random_init=True, input_size=75))
    # one batch of 6 pairs: the mean-image row reuses the cached real features (one more forward)
    rows = scoring.score_baselines(tiny_root, metrics, "test", size=(64, 44), batch_size=8, max_pairs=6)
    copy, mean = rows["baseline: copy source"], rows["baseline: mean train image"]
    for row in (copy, mean):
        assert row["n_images"] > 0 and 0 < row["ssim"] < 1 and row["lpips"] > 0
        assert math.isfinite(row["fid"]) and row["fid"] >= 0
    assert mean["n_images"] == copy["n_images"] == 6


def test_square_files_are_read_as_padded_portraits(tmp_path):
    img = np.zeros((32, 32, 3), dtype=np.uint8)
    img[:, 8:24] = 255  # a white 32x16 person in a black 32x32 padded frame
    Image.fromarray(img).save(tmp_path / "sq.png")
    loaded = scoring.load_image(tmp_path / "sq.png", (32, 16))
    assert loaded.shape == (3, 32, 16) and torch.allclose(loaded, torch.ones(3, 32, 16))


def test_print_table_skips_absent_columns_and_marks_missing_cells(capsys):
    scoring.print_table({"model": {"n_images": 3, "ssim": 0.5, "fid": 10.0}, "other": {"n_images": 3}})
    lines = capsys.readouterr().out.splitlines()
    assert "LPIPS" not in lines[0] and "FID" in lines[0]
    assert lines[2].split() == ["other", "3", "-", "-"]


def test_laplacian_variance_matches_explicit_differences_and_sees_blur():
    torch.manual_seed(0)
    x = torch.rand(2, 3, 20, 16, dtype=torch.float64)
    g = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]  # (B, H, W)
    lap = g[:, :-2, 1:-1] + g[:, 2:, 1:-1] + g[:, 1:-1, :-2] + g[:, 1:-1, 2:] - 4 * g[:, 1:-1, 1:-1]
    assert torch.allclose(metrics_lib.laplacian_variance(x), lap.flatten(1).var(dim=1))
    blurred = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    assert (metrics_lib.laplacian_variance(blurred) < 0.5 * metrics_lib.laplacian_variance(x)).all()


def _quiet_metrics(monkeypatch, tmp_path):
    """No LPIPS / FID weights anywhere: both become notes, and the run takes seconds."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(metrics_lib, "default_lpips_heads_path", lambda net: None)


def test_no_flags_scores_the_newest_sample_folder_and_baselines_on_its_pairs(ckpts, tiny_root, tmp_path,
                                                                            monkeypatch, capsys):
    import sample

    monkeypatch.chdir(tmp_path)
    _quiet_metrics(monkeypatch, tmp_path)
    expect = "run `python sample.py` first"
    with pytest.raises(SystemExit):
        evaluate.main([])
    assert expect in capsys.readouterr().err
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    shutil.copy(ckpts / "rpfm.pt", tmp_path / "runs" / "tiny" / "rpfm.pt")  # as `python train.py` leaves it
    sample.main([])
    result = evaluate.main([])
    rows = result["rows"]
    ignore, own = "baseline: ignore the source (mean part colour)", "baseline: the source's own part colour"
    assert list(rows) == ["rpfm", "baseline: copy source", "baseline: mean train image", ignore, own,
                          scoring.CEILING_ROW, scoring.TRUTH_ROW]
    n_test_pairs = len(evaluate.PairDataset(tiny_root, "test", 64, verbose=False))
    scored = [row["n_images"] for name, row in rows.items() if name != scoring.TRUTH_ROW]
    assert scored == [n_test_pairs] * 6  # the same pairs in every row
    # the src sens column's ceiling and truth: the fixture's test split is ONE person, so a swapped
    # source is the same person and the truth does not change at all
    assert rows[scoring.TRUTH_ROW] == {"src_sens": 0.0} and rows[scoring.CEILING_ROW]["src_sens"] == 0.0
    assert result["size"] == [64, 44]  # the photos' own size
    copy, mean = rows["baseline: copy source"], rows["baseline: mean train image"]
    assert mean["sharpness"] < copy["sharpness"]  # the average person is the blurry one
    # both halves of the task in every row that draws: structure and appearance, and the model's
    # source sensitivity (a 2-step checkpoint barely uses its source, but the number is measured)
    assert all(k in rows["rpfm"] for k in ("ssim", "part_dE", "torso_dE", "src_sens"))
    assert rows[own]["part_dE"] < rows[ignore]["part_dE"]  # the source holds the colours a model can copy
    assert "ssim" not in rows[own] and "ssim" in rows[scoring.CEILING_ROW]
    assert (tmp_path / "runs" / "evaluate.json").is_file()


def test_explicit_baselines_are_scored_on_the_generated_pairs(tiny_root, tmp_path, monkeypatch):
    _quiet_metrics(monkeypatch, tmp_path)
    dataset = evaluate.PairDataset(tiny_root, "test", 64, verbose=False)
    (tmp_path / "gen").mkdir()
    for s, t in dataset.pairs[2:5]:  # "generated" = the ground truth: 3 of the split's 20 pairs
        shutil.copy(dataset.image_path(t), tmp_path / "gen" / f"{Path(s).stem}___{Path(t).stem}.png")
    result = evaluate.main(["--generated", str(tmp_path / "gen"), "--real", str(tiny_root / "test_highres"),
                            "--baselines", "--data", str(tiny_root), "--size", "64x44",
                            "--out", str(tmp_path / "m.json")])
    assert [row["n_images"] for row in result["rows"].values()] == [3] * 5  # gen + 4 baselines, same pairs
    gen = result["rows"]["gen"]
    assert gen["sharpness"] == pytest.approx(1.0)
    assert gen["part_dE"] == pytest.approx(0.0, abs=1e-9)  # the ground truth wears the target's colours
    (tmp_path / "gen" / "stray.png").write_bytes((tmp_path / "gen" / next(
        p.name for p in (tmp_path / "gen").iterdir())).read_bytes())
    with pytest.raises(ValueError, match="name no test pair"):
        evaluate.pairs_named_by(sorted((tmp_path / "gen").iterdir()), tiny_root, "test")


@pytest.mark.parametrize("method", ["fpdm", "rpfm"])
def test_one_step_diagnostic_rows_for_both_processes(ckpts, tmp_path, method, capsys):
    """--one-step: a row per noise level (and FPDM's sampler start), SSIM in [0, 1], and the zero-latent
    baseline whose RMS error is the latents' own RMS (about 1 after the VAE's scaling)."""
    result = evaluate.main(["--one-step", str(ckpts / f"{method}.pt"), "--limit", "4", "--out",
                            str(tmp_path / "one.json")])
    rows = result["one_step"]
    levels = [name for name in rows if name.startswith("level ")]
    assert len(levels) == len(evaluate.ONE_STEP_LEVELS)
    assert ("pure noise at the sampler's first step" in rows) == (method == "fpdm")
    for row in rows.values():
        assert all(-1 <= row[f"ssim_w{w:g}"] <= 1 for w in evaluate.ONE_STEP_W)
    zero = rows["baseline: predict the zero latent"]
    assert zero["rmse_w1"] == zero["rmse_w2"] and 0.3 < zero["rmse_w1"] < 3
    assert ("fusion" in result["embedding_rms"]) == (method == "fpdm")
    assert "latent RMSE w 1" in capsys.readouterr().out


def test_the_swap_truth_is_the_benchmark_drawing(tiny_root, sign_root):
    """The source sensitivity's truth: the target pose drawn in the swapped source's look. Where the
    swapped source is the same person it must be the target file itself, bit for bit; elsewhere it
    must differ; photos and the signer benchmark have none."""
    from deepfashion import item_id
    dataset = evaluate.PairDataset(tiny_root, "train", 32, verbose=False)

    def same_person(n):  # per pair: is the swapped source the target's own person?
        return [item_id(dataset.pairs[j][0]) == item_id(dataset.pairs[i][1])
                for i, j in enumerate(appearance.swap_order(n).tolist())]

    n = next(n for n in range(8, 40) if 0 < sum(same_person(n)) < n)  # both kinds of swap
    swap = scoring.drawn_swap(dataset, n)
    sources, targets, truth = swap
    same = same_person(n)
    for i, is_same in enumerate(same):
        change = float((truth[i] - targets[i]).abs().max())
        assert (change == 0.0) if is_same else (change > 0.1), (i, is_same, change)
    sens = scoring.swap_sensitivity(swap)
    assert 0.1 < sens < 1.5

    class Lossless:  # an autoencoder that reconstructs exactly: its ceiling is the truth
        encode_latents = decode_latents = staticmethod(lambda x: x)
    assert scoring.swap_sensitivity(swap, Lossless()) == pytest.approx(sens, abs=1e-7)
    assert scoring.drawn_swap(evaluate.PairDataset(sign_root, "test", 32, verbose=False), 4) is None
