"""The signer benchmark end to end: it trains, sample.py turns a test video into a side-by-side GIF
with its frame rate, Hand SSIM and temporal error, and evaluate.py scores sign samples with the hand
and temporal columns (a copied first frame is a frozen video: it scores the real motion).

    python -m pytest -q tests/test_sign_video.py
"""
import json

import pytest
from PIL import Image

import data
import evaluate
import sample
import sign_data


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_the_benchmark_is_split_by_sequence_with_the_first_frame_as_source(sign_root):
    train, test = (data.PairDataset(sign_root, s, 32, verbose=False) for s in ("train", "test"))
    assert len(train.videos) == 2 and len(test.videos) == 1
    sequences = {split: {v.rsplit("_look", 1)[0] for v in ds.videos} for split, ds in (("train", train), ("test", test))}
    assert not sequences["train"] & sequences["test"]  # no sequence in both splits
    (video, frames), = test.videos.items()
    entry = next(e for e in sign_data.sequence_index() if e["split"] == "test")
    assert len(frames) == entry["frames"]  # a test video is whole
    assert all(s == frames[0] for s, _ in test.pairs) and [t for _, t in test.pairs] == frames
    assert Image.open(test.image_path(frames[0])).size == (52, 64)


def test_the_builtin_names_route_to_their_benchmarks(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(data, "ensure_benchmark", lambda size, root, kind: calls.append((size, kind)) or tmp_path)
    data.dataset_root("sign")
    data.dataset_root("", "32x22")
    data.dataset_root("sign", sign_size="64x52")
    assert calls == [((128, 104), "sign"), ((32, 22), "deepfashion"), ((64, 52), "sign")]
    assert data.dataset_root(str(tmp_path)) == tmp_path
    with pytest.raises(ValueError, match="--sign-size"):
        data.dataset_root("sign", sign_size="big")


def test_a_test_video_becomes_a_gif_beside_the_ground_truth(sign_ckpt, sign_root, tmp_path, capsys):
    out = tmp_path / "video"
    sample.main(["--ckpt", f"{sign_ckpt}@1,{sign_ckpt}@2", "--video", "first", "--data", str(sign_root),
                 "--limit", "12", "--warmup", "1", "--out", str(out)])
    rows = json_lines(capsys.readouterr().out)
    assert [r["steps"] for r in rows] == [1, 2] and all(r["frames"] == 12 for r in rows)
    for r in rows:
        assert r["frames_per_s"] > 0 and r["hand_crops"] > 0 and -1 <= r["hand_ssim"] <= 1
        assert r["mean"] >= 0 and r["real_change"] > 0 and r["repeat_change"] < 1e-6
    gif = Image.open(out / "video.gif")
    assert gif.n_frames == 12 and gif.width > 4 * 52  # pose | truth | two methods, side by side
    assert (out / "video.png").is_file() and len(json.loads((out / "video.json").read_text())) == 2


def test_video_mode_errors_are_one_line(sign_ckpt, sign_root, ckpts, tiny_root, capsys):
    for argv, message in (
        (["--ckpt", str(sign_ckpt), "--video", "nope", "--data", str(sign_root)], "no such test video"),
        (["--ckpt", str(ckpts / "rpfm.pt"), "--video", "first", "--data", str(tiny_root)], "dataset of videos"),
        (["--ckpt", f"{sign_ckpt}@x", "--video", "first"], "PATH@STEPS"),
    ):
        with pytest.raises(SystemExit) as exit_:
            sample.main(argv)
        assert message in str(exit_.value)


def test_sign_samples_are_scored_with_hands_and_time(sign_ckpt, sign_root, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sample.main(["--ckpt", str(sign_ckpt), "--data", str(sign_root), "--steps", "1", "--warmup", "1",
                 "--out", str(tmp_path / "runs" / "samples" / "rpfm")])
    result = evaluate.main(["--sens-pairs", "0", "--mean-images", "8"])
    out = capsys.readouterr().out
    assert "Hand PE left out" in out and "Hand SSIM" in out and "temporal" in out
    model, copy = result["rows"]["rpfm"], result["rows"]["baseline: copy source"]
    for row in (model, copy, result["rows"]["baseline: mean train image"]):
        assert -1 <= row["hand_ssim"] <= 1 and row["temporal"] >= 0  # SSIM can go below 0
    assert copy["temporal"] == pytest.approx(copy["real_change"])  # a copied first frame is frozen
    ceiling = result["rows"][evaluate.CEILING_ROW]
    assert "part_dE" in model and ceiling["hand_ssim"] > 0 and ceiling["temporal"] >= 0


def test_video_mode_without_ckpt_takes_the_sign_run(sign_ckpt, sign_root, tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        sample.main(["--video", "first"])
    assert "runs/tiny-sign/" in str(exit_.value) and "--data sign" in str(exit_.value)
    (tmp_path / "runs" / "tiny-sign").mkdir(parents=True)
    shutil.copy(sign_ckpt, tmp_path / "runs" / "tiny-sign" / "rpfm.pt")  # as `train.py --data sign` leaves it
    sample.main(["--video", "first", "--data", str(sign_root), "--limit", "3", "--warmup", "1"])
    row = json_lines(capsys.readouterr().out)[-1]
    assert row["checkpoint"].endswith("tiny-sign/rpfm.pt") and row["frames"] == 3
