"""Tests of sample.py: generation of the test pairs from a tiny checkpoint (named so that
evaluate.py matches them, recorded in samples.json), `python sample.py` with no flags, the
fixed-setting speed benchmark (its rows and counted NFE, never its timings), streaming on a
three-frame pose file, the flicker measures of streaming.py (a frozen output must score worse than
the truth), and one-line errors for bad input (flags, CSV rows) with no traceback.

    python -m pytest -q tests/test_sample.py
"""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import data
import scoring
import pipeline
import sample
import streaming


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("method", ["fpdm", "rpfm"])
def test_generates_test_pairs_that_evaluate_matches(ckpts, tiny_root, tmp_path, capsys, method):
    out = tmp_path / method
    sample.main(["--ckpt", str(ckpts / f"{method}.pt"), "--data", str(tiny_root), "--out", str(out),
                 "--limit", "5", "--batch-size", "2", "--steps", "4", "--warmup", "1"])
    files = sorted(out.glob("*.png"))
    assert len(files) == 5 and (tmp_path / f"{method}_grid.png").is_file()
    real = tiny_root / "test_highres"
    assert Image.open(files[0]).size == Image.open(next(real.iterdir())).size  # 44 x 64, as the photos
    assert len(scoring.match_files(out, real)) == 5
    record = json.loads((out / pipeline.SAMPLE_RECORD).read_text())
    assert record["count"] == 5 and sorted(f for _, _, f in record["pairs"]) == [f.name for f in files]
    row = json_lines(capsys.readouterr().out)[-1]
    # the release guidance w_src = w_fus = 2 is plain CFG: 2 branches for both methods
    assert row["method"] == method and row["steps"] == 4 and row["nfe"] == 4 * 2
    assert row["w_src"] == row["w_fus"] == 2.0
    assert {"ms_per_image", "images_per_s", "device", "batch", "sampler"} <= set(row)


def place_run(ckpts, runs, *methods):
    """Copy checkpoints into runs/tiny/ as train.py leaves them, oldest first."""
    (runs / "tiny").mkdir(parents=True, exist_ok=True)
    for age, method in enumerate(reversed(methods)):
        target = runs / "tiny" / f"{method}.pt"
        shutil.copy(ckpts / f"{method}.pt", target)
        os.utime(target, (1e9 - age * 100, 1e9 - age * 100))  # methods[-1] is the newest


def test_no_flags_samples_the_newest_finished_checkpoint_at_its_defaults(ckpts, tmp_path, monkeypatch,
                                                                          capsys):
    monkeypatch.chdir(tmp_path)
    place_run(ckpts, tmp_path / "runs", "fpdm", "rpfm")
    sample.main([])
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith(f"sample.py: using {os.path.join('runs', 'tiny', 'rpfm.pt')}")
    row = json_lines(out)[-1]
    assert (row["method"], row["sampler"], row["steps"], row["nfe"]) == ("rpfm", "euler", 10, 20)
    assert (tmp_path / "runs" / "samples" / "rpfm" / pipeline.SAMPLE_RECORD).is_file()
    assert (tmp_path / "runs" / "samples" / "rpfm_grid.png").is_file()


def test_fpdm_defaults_are_its_release_ddpm_20_steps_two_branches(ckpts, tiny_root, tmp_path, capsys):
    sample.main(["--ckpt", str(ckpts / "fpdm.pt"), "--out", str(tmp_path / "f"), "--limit", "1",
                 "--warmup", "0", "--precision", "bf16"])  # CPU bf16 autocast stands in for CUDA's
    row = json_lines(capsys.readouterr().out)[-1]
    got = (row["sampler"], row["steps"], row["w_src"], row["w_fus"], row["nfe"])
    assert got == ("ddpm", 20, 2.0, 2.0, 40)


def test_no_checkpoint_says_to_train_first(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expect_one_line_error([], "python train.py --method rpfm")


def test_benchmark_rows_fpdm_release_first_and_equal_nfe_pair(capsys):
    sample.main(["--benchmark", "--preset", "tiny", "--batch-size", "1", "--repeats", "1", "--warmup", "0"])
    lines = json_lines(capsys.readouterr().out)
    rows, summary = lines[:-1], lines[-1]
    got = [(r["method"], r["sampler"], r["steps"], r["nfe"], r["w_src"], r["w_fus"]) for r in rows]
    assert got == [("fpdm", "ddpm", 20, 40, 2.0, 2.0),    # FPDM's release, first
                   ("fpdm", "ddim", 50, 100, 2.0, 2.0),   # CFLD-style DDIM 50
                   ("fpdm", "ddim", 10, 20, 2.0, 2.0),    # equal NFE ...
                   ("rpfm", "euler", 10, 20, 2.0, 2.0),   # ... to RPFM's default
                   ("reflow", "euler", 2, 2, 1.0, 1.0),   # the student: guidance baked in, NFE = steps
                   ("reflow", "euler", 1, 1, 1.0, 1.0)]
    assert all({"ms_per_image", "images_per_s", "batch", "device"} <= set(r) for r in rows)
    assert len({(r["batch"], r["image_size"], r["device"]) for r in rows}) == 1  # one setting for all
    assert summary["reference"] == "RPFM default"
    assert set(summary["time_ratio"]) == {r["label"] for r in rows} - {"RPFM default"}  # within this one run
    fastest = min((r for r in rows if r["method"] != "fpdm"), key=lambda r: r["ms_per_image"])
    assert summary["fastest_rpfm"] == fastest["label"]
    assert summary["fpdm_release_over_fastest_rpfm"] == pytest.approx(rows[0]["ms_per_image"] / fastest["ms_per_image"])


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
    assert row["nfe"] == 2 * 2
    assert row["output_change"] > 0  # three different poses
    # the first pose drawn again after the stream: one fixed noise gives its frame back exactly
    assert row["repeat_pairs"] == 1 and row["repeat_change"] == 0.0 and row["repeat_worst_frame"] == 3


@pytest.mark.parametrize("method", ["rpfm", "fpdm"])
def test_streaming_identical_poses_gives_identical_frames(ckpts, tiny_root, tmp_path, capsys, method):
    """One noise for the whole stream (and the same DDPM step noise): a still pose is a still image."""
    keypoints = next(iter(data.load_annotations(tiny_root, "test").values()))  # (18, 2)
    poses = write_pose_csv(tmp_path / "still.csv", [keypoints.reshape(-1).tolist()] * 3)
    source = next((tiny_root / "test_highres").iterdir())
    sample.main(["--ckpt", str(ckpts / f"{method}.pt"), "--source", str(source), "--poses", str(poses),
                 "--out", str(tmp_path / "still"), "--steps", "3", "--warmup", "0"])
    row = json_lines(capsys.readouterr().out)[-1]
    assert row["output_change"] == 0.0 and row["repeat_pairs"] == 3 and row["repeat_change_max"] == 0.0
    gif = Image.open(tmp_path / "still" / "stream.gif")
    frames, duration = [], 0
    for i in range(gif.n_frames):  # note: PIL stores identical frames once, their durations summed
        gif.seek(i)
        frames.append(gif.convert("RGB").tobytes())
        duration += gif.info["duration"]
    assert len(set(frames)) == 1 and duration == 3 * 100  # three frames at the default 10 frames/s


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
    expect_one_line_error(["--benchmark", "--steps", "4"], "drop --steps")
    expect_one_line_error(["--ckpt", str(ckpts / "fpdm.pt"), "--solver", "heun"], "takes --sampler")
    expect_one_line_error(["--ckpt", str(ckpts / "rpfm.pt"), "--solver", "ddim"],
                          "not a flow-matching solver")
    expect_one_line_error(["--precision", "fp16"], "invalid choice: 'fp16'")
    short = write_pose_csv(tmp_path / "short.csv", [[1.0] * 36, [1.0] * 35])
    source = tmp_path / "src.png"
    Image.new("RGB", (44, 64)).save(source)
    expect_one_line_error(["--ckpt", str(ckpts / "rpfm.pt"), "--source", str(source),
                           "--poses", str(short)], "row 2: expected 36 numbers")
    expect_one_line_error(["--ckpt", str(ckpts / "rpfm.pt"), "--data", str(tmp_path / "nowhere")],
                          "nowhere")


def stream_argv(ckpts, tmp_path, poses, *extra):
    source = tmp_path / "src.png"
    Image.new("RGB", (44, 64), (200, 40, 40)).save(source)
    return ["--ckpt", str(ckpts / "rpfm.pt"), "--source", str(source), "--poses", str(poses),
            "--out", str(tmp_path / "s"), "--steps", "1", "--warmup", "0", *extra]


def test_streaming_bad_frame_rates_and_rows_are_one_line(ckpts, tmp_path):
    good = write_pose_csv(tmp_path / "good.csv", [[20.0, 30.0] * 18])
    for fps in ("0", "-5", "nan", "1000"):  # once a ZeroDivisionError and an OverflowError
        expect_one_line_error(stream_argv(ckpts, tmp_path, good, "--fps", fps), f"--fps {float(fps)!r}: expected")
    expect_one_line_error(stream_argv(ckpts, tmp_path, good, "--pose-frame", "256"), "--pose-frame '256'")
    nan = write_pose_csv(tmp_path / "nan.csv", [[20.0, 30.0] * 18, ["nan"] * 36])
    expect_one_line_error(stream_argv(ckpts, tmp_path, nan), "nan.csv row 2: no joint inside the 256x176 frame")
    far = write_pose_csv(tmp_path / "far.csv", [[9000.0, 9000.0] * 18])
    expect_one_line_error(stream_argv(ckpts, tmp_path, far), "far.csv row 1: no joint inside")
    words = write_pose_csv(tmp_path / "words.csv", [[1.0] * 36, ["x"] * 36])
    expect_one_line_error(stream_argv(ckpts, tmp_path, words), "words.csv row 2: expected 36 numbers")
    (tmp_path / "fps.csv").write_text("# fps=0\n" + ",".join(["20"] * 36) + "\n")
    expect_one_line_error(stream_argv(ckpts, tmp_path, tmp_path / "fps.csv"), "fps.csv row 1: fps '0'")


def test_streaming_takes_the_csvs_frame_rate_and_partly_missing_rows(ckpts, tmp_path, capsys):
    row = [20.0, 30.0] * 18
    row[2:4] = ["nan", ""]  # joint 1: a NaN and an empty cell are a missing joint, not an error
    row[4:6] = [190, 300]   # joint 2 just outside the 176x256 frame: onto its edge
    poses = tmp_path / "p.csv"
    poses.write_text("# fps=5\n" + ",".join(f"x{i},y{i}" for i in range(18)) + "\n" + ",".join(map(str, row)) + "\n")
    sequence = streaming.read_pose_csv(poses)
    assert sequence.fps == 5 and len(sequence.frames) == 1
    assert sequence.frames[0][1].tolist() == [-1, -1] and sequence.frames[0][2].tolist() == [175, 255]
    sample.main(stream_argv(ckpts, tmp_path, poses))
    assert Image.open(tmp_path / "s" / "stream.gif").info["duration"] == 200  # 5 frames/s


def test_video_flicker_a_frozen_output_scores_worse_than_the_truth():
    g = torch.Generator().manual_seed(0)
    real = [torch.rand(3, 16, 16, generator=g) * 2 - 1 for _ in range(5)]  # (3, H, W) each
    truth = streaming.video_flicker(real, real)
    frozen = streaming.video_flicker([real[0]] * 5, real)
    shimmer = [r + 0.2 * torch.randn(3, 16, 16, generator=g) for r in real]
    assert truth["flicker_vs_real"] == 0.0
    assert frozen["flicker_vs_real"] > 0.1 and streaming.video_flicker(shimmer, real)["flicker_vs_real"] > 0.05
    # the worst frame: a single jump in an otherwise true video
    jump = list(real)
    jump[3] = -real[3]
    assert streaming.video_flicker(jump, real)["flicker_worst_frame"] in (3, 4)
    with pytest.raises(ValueError, match="same length"):
        streaming.video_flicker(real[:2], real)


def test_repeat_change_is_zero_only_for_the_same_frame():
    a, b = torch.zeros(3, 4, 4), torch.ones(3, 4, 4)  # (3, H, W)
    kp0, kp1 = np.zeros((18, 2), np.float32), np.ones((18, 2), np.float32)
    assert streaming.repeat_change([a, b, a], [kp0, kp1, kp0])["repeat_change"] == 0.0
    moved = streaming.repeat_change([a, b, b], [kp0, kp1, kp0])  # the same pose drawn differently
    assert moved["repeat_change"] == 0.5 and moved["repeat_worst_frame"] == 2
    assert streaming.repeat_change([a, b], [kp0, kp1])["repeat_pairs"] == 0


def test_clamped_joints_stay_on_the_frame():
    kp = np.array([[-40, 10], [500, 900]] + [[5, 5]] * 16, np.float32)
    out = streaming.clamp_keypoints(kp, (256, 176))
    assert out[0].tolist() == [0, 10] and out[1].tolist() == [175, 255]


def test_a_live_frame_is_the_pair_generated_in_one_call(ckpts, tiny_root):
    """streaming.Live keeps the source's tokens and part colours for every frame; a frame must equal
    pipeline.generate of the same source, pose, keypoints and noise (the painting and tokens computed anew)."""
    gen = pipeline.Generator.from_checkpoint(ckpts / "rpfm.pt")
    assert gen.unet.config.source_colours
    ds = data.PairDataset(tiny_root, "test", gen.image_size, verbose=False)
    item = ds[0]
    sampling = pipeline.sampling_for(gen.process, 2, "")
    live = streaming.Live.start(gen, item["source"][None], ds.frame, sampling, "fp32",
                                source_keypoints=ds.keypoints[item["source_name"]])
    frame = live.frame(ds.keypoints[item["target_name"]]).image  # (1, 3, S, S)
    pose = streaming.pose_tensor(ds.keypoints[item["target_name"]], gen.image_size, ds.frame, "cpu")  # (1, 3, S, S)
    torch.manual_seed(live.seed)
    image, _ = pipeline.generate(gen, item["source"][None], pose, sampling, pipeline.PhaseTimer(torch.device("cpu")),
                                 "fp32", noise=live.noise, keypoints=live.keypoints(ds.keypoints[item["target_name"]]))
    assert torch.allclose(frame, image, atol=1e-6)
