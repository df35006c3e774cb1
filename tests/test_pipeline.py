"""Tests of pipeline.py (checkpoint -> generator -> latents) and the terminal conventions of data.py:
the checkpoint file and its one-line errors, old checkpoints' settings, the newest finished
checkpoint, the release defaults and their counted NFE, model presets shared with train.py,
the two floors (no library file imports a script, no import circle), and log-friendly progress.

    python -m pytest -q tests/test_pipeline.py
"""
import ast
import os
import sys
from pathlib import Path

import pytest
import torch

import cli
import diffusion
import flow_matching
import pipeline
from guidance import RowCounter

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"train", "sample", "evaluate", "demo"}


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_checkpoint_errors_are_one_line(ckpts, tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        pipeline.load_checkpoint(tmp_path / "none.pt")
    assert "does not exist" in one_line(e)
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError) as e:
        pipeline.load_checkpoint(tmp_path / "junk.pt")
    assert "corrupt" in one_line(e)
    torch.save({"weights": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError) as e:
        pipeline.load_checkpoint(tmp_path / "foreign.pt")
    assert "not a checkpoint of this project" in one_line(e)
    with pytest.raises(ValueError) as e:
        pipeline.load_checkpoint(ckpts / "vae.pt", pipeline.LATENT_METHODS)
    assert "holds a 'vae' model, expected fpdm or rpfm" in one_line(e)


def test_save_is_atomic_and_round_trips(tmp_path, monkeypatch):
    target = tmp_path / "x.pt"
    pipeline.save_checkpoint(target, {"method": "vae", "step": 1})
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        pipeline.save_checkpoint(target, {"method": "vae", "step": 2})
    ckpt = pipeline.load_checkpoint(target, "vae")
    assert ckpt["step"] == 1 and ckpt["version"] == pipeline.CKPT_VERSION  # the old file is intact


def old_style(ckpt: dict) -> dict:
    """The settings as a checkpoint written before `precision`, `joint_drop`, `prediction` existed."""
    settings = dict(ckpt["config"]["train"])
    for key in ("precision", "joint_drop", "prediction"):
        settings.pop(key, None)
    settings["bf16"] = True
    return {**ckpt, "config": {**ckpt["config"], "train": settings}}


def test_old_checkpoint_settings_are_tolerated(ckpts, tmp_path):
    process = pipeline.make_process("fpdm", {"bf16": True, "drop_prob": 0.3, "offset_noise": 0.1})
    assert process.drop_probs["pose"] == 0.3 and process.prediction == "eps"
    assert process.joint_drop == pipeline.PROCESS_SETTINGS["joint_drop"]
    old = tmp_path / "old.pt"
    pipeline.save_checkpoint(old, old_style(pipeline.load_checkpoint(ckpts / "fpdm.pt")))
    new, again = (pipeline.Generator.from_checkpoint(p) for p in (ckpts / "fpdm.pt", old))
    inputs = new.unet.example_inputs(batch_size=2)
    with torch.no_grad():
        assert torch.equal(new.unet(**inputs), again.unet(**inputs))
    assert again.method == "fpdm" and again.fusion is not None
    assert isinstance(again.process, diffusion.Diffusion)


def copy_with(src: Path, dst: Path, age: float, **changes):
    ckpt = pipeline.load_checkpoint(src)
    if "step" in changes:
        ckpt["step"] = changes["step"]
    pipeline.save_checkpoint(dst, ckpt)
    os.utime(dst, (1e9 - age, 1e9 - age))


def test_newest_finished_checkpoint(ckpts, tmp_path):
    assert pipeline.newest_checkpoint(tmp_path) is None  # nothing at all
    copy_with(ckpts / "fpdm.pt", tmp_path / "fpdm.pt", age=100)
    copy_with(ckpts / "rpfm.pt", tmp_path / "rpfm.pt", age=0)
    assert pipeline.newest_checkpoint(tmp_path).name == "rpfm.pt"
    copy_with(ckpts / "rpfm.pt", tmp_path / "rpfm.pt", age=0, step=1)  # newest, but unfinished (1 of 2)
    assert pipeline.newest_checkpoint(tmp_path).name == "fpdm.pt"
    (tmp_path / "fpdm.pt").unlink()
    with pytest.raises(ValueError) as e:
        pipeline.newest_checkpoint(tmp_path)
    assert "step 1 of 2" in one_line(e) and "--resume" in str(e.value)


@pytest.mark.parametrize("method, expected, rows_per_image", [
    ("fpdm", pipeline.Sampling(20, "ddpm", 2.0, 2.0), 40),  # FPDM's release: DDPM 20, one weight 2
    ("rpfm", pipeline.Sampling(10, "euler", 2.0, 2.0), 20),
    ("reflow", pipeline.Sampling(2, "euler", 1.0, 1.0), 2),  # guidance baked in: one branch, NFE = steps
])
def test_release_defaults_and_their_counted_nfe(method, expected, rows_per_image):
    process = pipeline.make_process(method, {})
    assert pipeline.sampling_for(process) == expected
    keys = ("pose", "src_tokens", "fusion") if method == "fpdm" else ("pose", "src_tokens")
    cond = {k: torch.zeros(3, 1) for k in keys}  # the counter ignores the values
    counter = RowCounter()
    pipeline.sample_latents(process, counter, torch.zeros(3, 4, 2, 2), cond)
    assert counter.rows == 3 * rows_per_image
    module = diffusion if method == "fpdm" else flow_matching
    assert module.nfe(expected.steps, expected.sampler, keys, expected.w_src, expected.w_fus) == rows_per_image
    with pytest.raises(ValueError, match="expected one of"):
        pipeline.sampling_for(process, sampler="rk4")


def test_random_generators_are_the_preset_sizes_and_never_pretrained():
    fpdm = pipeline.Generator.random_init("fpdm", "tiny")
    rpfm = pipeline.Generator.random_init("rpfm", "tiny")
    assert fpdm.image_size == rpfm.image_size == pipeline.MODEL_PRESETS["tiny"]["image_size"]
    assert fpdm.unet.config.latent_size == fpdm.image_size // fpdm.vae.downsample_factor
    assert fpdm.unet.config.fusion_dim == fpdm.fusion.embed_dim and rpfm.unet.config.fusion_dim == 0
    assert rpfm.fusion is None and not fpdm.fusion.config.pretrained
    h = fpdm.unet.config.latent_size
    assert fpdm.noise(2, "cpu").shape == (2, fpdm.vae.latent_channels, h, h) == (2, 8, h, h)


def test_model_presets_agree_with_train_presets():
    import train  # a test may import the script; the library never does

    for name, sizes in pipeline.MODEL_PRESETS.items():
        cfg = train.parse_config(["--preset", name])
        assert {k: getattr(cfg, k) for k in sizes} == sizes, name
    assert set(pipeline.MODEL_PRESETS) == set(train.PRESETS)


def project_imports(module: str) -> set[str]:
    """The project modules a file imports, anywhere in it (lazy imports inside functions too)."""
    tree = ast.parse((REPO / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & {p.stem for p in REPO.glob("*.py")}


def test_two_floors_and_no_import_circle():
    modules = {p.stem for p in REPO.glob("*.py")}
    graph = {m: project_imports(m) for m in modules}
    for library in modules - SCRIPTS:
        assert not graph[library] & SCRIPTS, f"library file {library}.py imports a script"
    for script in SCRIPTS & modules:  # the scripts' floor: what two scripts share lives in the library
        assert not graph[script] & SCRIPTS, f"script {script}.py imports {sorted(graph[script] & SCRIPTS)}"
    done, path = set(), []

    def visit(m):  # depth-first search: meeting a module on the current path is a circle
        assert m not in path, f"import circle: {' -> '.join(path + [m])}"
        if m not in done:
            path.append(m)
            for n in graph[m]:
                visit(n)
            path.pop()
            done.add(m)

    for m in sorted(modules):
        visit(m)


def test_progress_writes_a_few_whole_lines_when_not_a_terminal(capsys):
    assert not sys.stderr.isatty()  # pytest captures stderr: what a log file or CI sees
    for _ in cli.progress(range(1000), desc="[test] loop", log_seconds=0):
        pass
    bar = cli.progress(total=200, desc="[test] manual", log_seconds=0)
    for i in range(200):
        bar.update(1)
        bar.set_postfix(loss=i)  # tqdm redraws on each of these; a log gets no line from them
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert 2 * 10 <= len(lines) <= 2 * 13  # about one line per 10 %, plus the start and the end
    assert lines[-1].startswith("[test] manual: 200/200")
    for _ in cli.progress(range(1000), desc="[test] quick"):  # seconds, not minutes: first and last line
        pass
    assert [line.split(":")[1].split()[0] for line in capsys.readouterr().err.splitlines()] == ["0/1000", "1000/1000"]


def test_build_cond_paints_the_source_colours_into_the_pose_and_needs_keypoints():
    import unet
    model = unet.UNet("tiny").eval()
    source, pose = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64)
    kp = torch.rand(2, 18, 2) * 63
    with pytest.raises(ValueError) as e:
        pipeline.build_cond(model, None, source, pose)
    assert "keypoints" in one_line(e)
    cond = pipeline.build_cond(model, None, source, pose, keypoints=(kp, kp))
    assert cond["pose"].shape == (2, 3 + 4, 64, 64) and torch.equal(cond["pose"][:, :3], pose)
    z = model.config.latent_channels
    assert model(torch.randn(2, z, 16, 16), torch.rand(2) * 1000, **cond).shape == (2, z, 16, 16)
    # a hidden source pose paints nothing: what an uploaded photo (no keypoints) gets
    hidden = pipeline.hide_source_pose((kp, kp), p=1.0)
    assert torch.equal(hidden[1], kp) and hidden[0].eq(-1).all()
    assert pipeline.build_cond(model, None, source, pose, keypoints=hidden)["pose"][:, 3:].eq(0).all()
    assert torch.equal(pipeline.hide_source_pose((kp, kp), p=0.0)[0], kp)
