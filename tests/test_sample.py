"""Tests of sample.py: generation of the test pairs from a tiny checkpoint (named so that
evaluate.py matches them), the random-init speed benchmark, streaming on a three-frame pose
file, and one-line errors for bad input.

    python -m pytest -q tests/test_sample.py
"""
import json

import pytest
from PIL import Image

import data
import evaluate
import sample
import train

FAST = ["--image-size", "32", "--batch-size", "4", "--num-workers", "0", "--vae-steps", "2",
        "--fusion-steps", "2", "--steps", "2", "--grid-steps", "2", "--warmup", "1"]


@pytest.fixture(scope="module")
def ckpts(tiny_root, tmp_path_factory):
    """Tiny fpdm and rpfm checkpoints sharing one VAE (two steps each: only plumbing is tested)."""
    out = tmp_path_factory.mktemp("ckpts")
    for method in ("fpdm", "rpfm"):
        train.run(train.parse_config(["--method", method, "--data", str(tiny_root),
                                      "--out", str(out), *FAST]))
    return out


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("method, nfe", [("fpdm", 4 * 3), ("rpfm", 4 * 2)])
def test_generates_test_pairs_that_evaluate_matches(ckpts, tiny_root, tmp_path, capsys, method, nfe):
    out = tmp_path / method
    sample.main(["--ckpt", str(ckpts / f"{method}.pt"), "--data", str(tiny_root), "--out", str(out),
                 "--limit", "5", "--batch-size", "2", "--steps", "4", "--warmup", "1"])
    files = sorted(out.glob("*.png"))
    assert len(files) == 5 and (tmp_path / f"{method}_grid.png").is_file()
    real = tiny_root / "test_highres"
    assert Image.open(files[0]).size == Image.open(next(real.iterdir())).size  # 44 x 64, as the photos
    matched = evaluate.match_files(out, real)
    assert len(matched) == 5
    row = json_lines(capsys.readouterr().out)[-1]
    assert row["method"] == method and row["nfe"] == nfe  # 4 steps x guidance branches
    assert {"ms_per_image", "images_per_s", "device"} <= set(row)


def test_benchmark_times_both_methods_without_a_checkpoint(capsys):
    sample.main(["--benchmark", "--preset", "tiny", "--batch-size", "1", "--repeats", "1",
                 "--warmup", "1", "--steps", "2"])
    out = capsys.readouterr().out
    rows = json_lines(out)
    fpdm, rpfm = rows[0], rows[1]
    assert fpdm["method"] == "fpdm" and rpfm["method"] == "rpfm"
    assert fpdm["nfe"] == 2 * 3 and rpfm["nfe"] == 2 * 2  # three guidance branches vs two
    assert "faster than FPDM" in out and "speedup_rpfm_over_fpdm" in rows[2]


def write_pose_csv(path, rows):
    path.write_text("\n".join(",".join(str(v) for v in row) for row in rows) + "\n")
    return path


def test_streaming_three_frames_to_a_gif(ckpts, tiny_root, tmp_path, capsys):
    keypoints = list(data.load_annotations(tiny_root, "test").values())[:3]  # (18, 2) each
    poses = write_pose_csv(tmp_path / "poses.csv", [kp.reshape(-1).tolist() for kp in keypoints])
    source = next((tiny_root / "test_highres").iterdir())
    sample.main(["--ckpt", str(ckpts / "rpfm.pt"), "--source", str(source), "--poses", str(poses),
                 "--out", str(tmp_path / "stream"), "--steps", "2", "--warmup", "1"])
    gif = Image.open(tmp_path / "stream" / "stream.gif")
    assert gif.n_frames == 3
    row = json_lines(capsys.readouterr().out)[-1]
    assert row["mode"] == "stream" and row["frames"] == 3 and row["frames_per_s"] > 0


def expect_one_line_error(argv, expected):
    with pytest.raises(SystemExit) as info:
        sample.main(argv)
    message = str(info.value.code)
    assert message.startswith("error:") and expected in message and "\n" not in message


def test_bad_inputs(ckpts, tmp_path):
    expect_one_line_error(["--ckpt", str(ckpts / "vae.pt")], "holds a 'vae' model")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    expect_one_line_error(["--ckpt", str(tmp_path / "junk.pt")], "corrupt")
    expect_one_line_error(["--ckpt", str(tmp_path / "none.pt")], "does not exist")
    expect_one_line_error(["--benchmark", "--preset", "huge"], "invalid choice: 'huge'")
    short = write_pose_csv(tmp_path / "short.csv", [[1.0] * 36, [1.0] * 35])
    source = tmp_path / "src.png"
    Image.new("RGB", (44, 64)).save(source)
    expect_one_line_error(["--ckpt", str(ckpts / "rpfm.pt"), "--source", str(source),
                           "--poses", str(short)], "row 2: expected 36 numbers")
    expect_one_line_error(["--ckpt", str(ckpts / "rpfm.pt"), "--data", str(tmp_path / "nowhere")],
                          "nowhere")
