"""Tests for unet.py: shapes of every preset, the zero-initialised pose branch, gradient flow
to every parameter, dropped conditions as zeros, config round trips, the timm ViT source encoder.

    python -m pytest -q tests/test_unet.py

Note on zero-init: conv_out, every ResBlock's conv2, every SpatialTransformer's proj_out and the
PoseEncoder's last conv start at zero, so a fresh model outputs exactly 0 whatever its inputs.
Tests about what the output depends on therefore first "wake" the model (`_wake`: small random
values in those layers), exactly as a few training steps would.
"""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import unet
from unet import UNet, UNetConfig


@pytest.fixture(autouse=True)
def one_thread():
    """note: these test models are so small that a second thread only adds synchronisation, and on
    a busy machine two spinning threads made this file ten times slower; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _wake(model: UNet, keep_zero: tuple = ()) -> UNet:
    """Give every all-zero weight matrix/kernel small random values, except those named in keep_zero."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 and not p.any() and not name.startswith(keep_zero):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def _tiny(**changes) -> UNet:
    torch.manual_seed(0)
    return UNet(dataclasses.replace(unet.make_config("tiny"), **changes))


@pytest.mark.parametrize("preset", ["tiny", "tiny48", "small"])
def test_output_shape_cpu_presets(preset):
    torch.manual_seed(0)
    model = UNet(preset)
    cfg = model.config
    inputs = model.example_inputs(batch_size=1)
    out = model(**inputs)
    assert out.shape == (1, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    tokens = model.encode_source(torch.rand(1, 3, cfg.image_size, cfg.image_size) * 2 - 1)
    assert tokens.shape == inputs["src_tokens"].shape == (1, model.num_source_tokens, cfg.context_dim)


def test_base_preset_shapes_and_size_on_meta_device():
    # the meta device runs shapes only, so the ~1 B-parameter GPU preset is checked in a second
    with torch.device("meta"):
        model = UNet("base")
        inputs = model.example_inputs(batch_size=2)
        out = model(**inputs)
        tokens = model.encode_source(torch.zeros(2, 3, 256, 256))
    assert out.shape == (2, 4, 32, 32)
    # DINOv2 ViT-B/14 at 224 px: 16 x 16 patches and the class token
    assert tokens.shape == (2, 16 * 16 + 1, 768) and model.num_source_tokens == 257
    # SD 1.5's UNet (same widths) has 860 M parameters; ViT-B about 86 M
    assert 0.8e9 < unet.count_parameters(model) - unet.count_parameters(model.source_encoder) < 1.0e9
    assert 80e6 < unet.count_parameters(model.source_encoder) < 90e6


def test_example_inputs_are_valid():
    model = _tiny()
    inputs = model.example_inputs(batch_size=3)
    assert set(inputs) == {"x_t", "t", "pose", "src_tokens", "fusion"}
    assert inputs["t"].shape == (3,) and 0 <= inputs["t"].min() and inputs["t"].max() <= 1000
    assert 0 <= inputs["pose"].min() and inputs["pose"].max() <= 1
    # the tiny preset's pose input: the 3-channel skeleton + the 4 channels of the painted source colours
    assert inputs["pose"].shape == (3, 3 + 4, 64, 64) and inputs["fusion"].shape == (3, 128)
    assert torch.allclose(inputs["fusion"].norm(dim=-1), torch.ones(3))  # unit-norm like fusion.py
    assert model(**inputs).shape == inputs["x_t"].shape


def test_zero_initialised_pose_branch_is_ignored_at_init_then_learns():
    model = _wake(_tiny(), keep_zero=("pose_encoder.out",))
    inputs = model.example_inputs(batch_size=2)
    # the pose map's channels only: the painted source colours (the last 4) also reach conv_in directly
    pose_map = model.config.pose_channels
    no_pose = dict(inputs, pose=torch.cat([torch.zeros_like(inputs["pose"][:, :pose_map]),
                                           inputs["pose"][:, pose_map:]], dim=1))
    with torch.no_grad():
        # identical, not merely close: the zero conv adds exact zeros to the first feature map
        assert torch.equal(model(**inputs), model(**no_pose))
        assert model(**inputs).abs().max() > 0  # the woken rest of the network does produce output
    # one gradient step: the zero conv gets a gradient at once (its input features are not zero)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.mse_loss(model(**inputs), torch.randn_like(inputs["x_t"])).backward()
    assert model.pose_encoder.out.weight.grad.abs().max() > 0
    opt.step()
    with torch.no_grad():
        assert not torch.allclose(model(**inputs), model(**no_pose))


def _nonzero_grads(model: UNet, step) -> set:
    step()
    return {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}


def test_gradients_reach_every_parameter():
    """The zero-initialised layers sit in series, three deep, so gradients spread in three steps:
    step 1 only conv_out (everything upstream is multiplied by its zero weights); step 2 the
    layers feeding conv_out's path directly (ResBlock conv2, proj_out, the pose zero conv and the
    main path); step 3 everything behind those (conv1, norms, the time / fusion MLPs via the
    AdaGN scale and shift, attention, the pose and source encoders)."""
    model = _tiny()
    torch.manual_seed(1)
    inputs = model.example_inputs(batch_size=2)
    source = torch.rand(2, 3, 64, 64) * 2 - 1
    target = torch.randn_like(inputs["x_t"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def step():
        opt.zero_grad()
        out = model(**dict(inputs, src_tokens=model.encode_source(source)))
        F.mse_loss(out, target).backward()
        opt.step()

    assert _nonzero_grads(model, step) == {"conv_out.weight", "conv_out.bias"}
    second = _nonzero_grads(model, step)
    assert "pose_encoder.out.weight" in second and "pose_encoder.body.0.weight" not in second
    all_names = {name for name, _ in model.named_parameters()}
    assert all_names - _nonzero_grads(model, step) == set()


def test_none_means_zeros():
    model = _wake(_tiny())
    inputs = model.example_inputs(batch_size=2)
    zeros = {k: torch.zeros_like(inputs[k]) for k in ("pose", "src_tokens", "fusion")}
    with torch.no_grad():
        assert torch.equal(model(inputs["x_t"], inputs["t"]), model(inputs["x_t"], inputs["t"], **zeros))
        # one condition at a time too: what guidance does when it drops a single branch
        only_pose = model(inputs["x_t"], inputs["t"], pose=inputs["pose"])
        assert torch.equal(only_pose, model(inputs["x_t"], inputs["t"], **dict(zeros, pose=inputs["pose"])))


def test_time_source_and_fusion_each_change_the_output():
    model = _wake(_tiny())
    inputs = model.example_inputs(batch_size=2)
    with torch.no_grad():
        ref = model(**inputs)
        assert torch.allclose(ref, model(**inputs))  # deterministic (no dropout in the preset)
        for key, other in [("t", 1000 - inputs["t"]),
                           ("src_tokens", torch.randn_like(inputs["src_tokens"])),
                           ("fusion", F.normalize(torch.randn_like(inputs["fusion"]), dim=-1))]:
            assert not torch.allclose(ref, model(**dict(inputs, **{key: other})), atol=1e-5), key
        # a scalar time broadcasts to the batch like a (B,) tensor of that value
        t_row = torch.full((2,), 250.0)
        assert torch.allclose(model(**dict(inputs, t=t_row)), model(**dict(inputs, t=torch.tensor(250.0))))


def test_config_round_trip_through_dict_and_json():
    model = _wake(_tiny())
    as_dict = dataclasses.asdict(model.config)
    from_json = json.loads(json.dumps(as_dict))  # tuples come back as lists
    for config in (as_dict, from_json):
        rebuilt = UNet(config)
        assert rebuilt.config == model.config
        rebuilt.load_state_dict(model.state_dict())  # strict: the same architecture
        inputs = model.example_inputs(batch_size=1)
        with torch.no_grad():
            assert torch.equal(rebuilt(**inputs), model(**inputs))
    assert isinstance(UNet(UNetConfig()).config, UNetConfig)
    config = UNetConfig()
    assert unet.make_config(config) is config  # an instance is used as it is (the VAE copies)


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="tiny, tiny48, small, base"):
        UNet("huge")
    with pytest.raises(ValueError, match="unknown fields"):
        UNet({"model_chanels": 32})
    with pytest.raises(ValueError, match="pose_widths"):
        UNetConfig(image_size=64, latent_size=8)  # an 8x encoder needs 4 pose widths
    with pytest.raises(ValueError, match="tiny48 for 48 px"):  # 12 does not halve three times
        UNetConfig(**dict(dataclasses.asdict(unet.PRESETS["tiny"]), image_size=48, latent_size=12))
    with pytest.raises(ValueError, match="source_paint 'blur': expected one of mean, warp"):
        dataclasses.replace(unet.PRESETS["tiny"], source_paint="blur")
    model = _tiny()
    inputs = model.example_inputs(batch_size=1)
    with pytest.raises(ValueError, match="pose"):
        model(**dict(inputs, pose=torch.zeros(1, 3, 32, 32)))


def test_no_fusion_input_when_fusion_dim_is_zero():
    model = _wake(_tiny(fusion_dim=0))
    inputs = model.example_inputs(batch_size=1)
    assert inputs["fusion"] is None and model.fusion_mlp is None
    assert model(**inputs).shape == inputs["x_t"].shape
    with pytest.raises(ValueError, match="fusion_dim=0"):
        model(**dict(inputs, fusion=torch.zeros(1, 128)))


def test_bf16_autocast_matches_float32():
    model = _wake(_tiny())
    inputs = model.example_inputs(batch_size=1)
    with torch.no_grad():
        ref = model(**inputs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**inputs)
    assert low.dtype == torch.float32  # handed back in the caller's dtype
    assert torch.isfinite(low).all()
    assert (low - ref).norm() < 0.05 * ref.norm()  # bf16 keeps about 3 significant digits


def test_timm_dinov2_source_encoder_offline(tmp_path):
    # the smallest DINOv2 architecture, random init, at 28 px: 2 x 2 patches + the class token
    name = "vit_small_patch14_dinov2.lvd142m"
    model = _tiny(source_encoder=name, source_image_size=28)
    source = torch.rand(2, 3, 64, 64) * 2 - 1
    tokens = model.encode_source(source)
    assert tokens.shape == (2, 5, 128) and model.num_source_tokens == 5
    z = model.config.latent_channels
    assert model(**dict(model.example_inputs(batch_size=2), src_tokens=tokens)).shape == (2, z, 16, 16)
    # a local weight file loads through timm's pretrained_cfg_overlay (no hub needed); another
    # seed, so equal weights can only come from the file
    path = tmp_path / "vit.pth"
    saved = model.source_encoder.backbone.state_dict()
    torch.save(saved, path)
    torch.manual_seed(123)
    config = dataclasses.replace(model.config, source_checkpoint=str(path))
    pretrained = UNet(config).source_encoder
    loaded = pretrained.backbone.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)
    # as FPDM: pretrained weights are frozen and only the projection trains; random init trains all
    assert not any(p.requires_grad for p in pretrained.backbone.parameters())
    assert all(p.requires_grad for p in pretrained.proj.parameters())
    assert "frozen" in pretrained.describe() and str(path) in pretrained.describe()
    assert all(p.requires_grad for p in model.source_encoder.backbone.parameters())
    assert "random init" in model.source_encoder.describe()
    with pytest.raises(FileNotFoundError, match="source_checkpoint"):
        _tiny(source_encoder=name, source_image_size=28, source_checkpoint=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="timm model name"):
        _tiny(source_encoder="vit_no_such_model")


def test_source_pathway_of_the_cpu_presets_and_of_older_checkpoints():
    """The tiny preset's source pathway (group norms of >= 4 channels, the colour skip, the global
    source embedding: unet.py says why each) and an older checkpoint's config, which lacks those
    fields, rebuilding exactly the network it was trained as."""
    new = UNet("tiny")
    norms = [m for m in new.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert min(m.num_channels // m.num_groups for m in norms) >= 4  # no instance norm strips the colours
    old_fields = {k: v for k, v in dataclasses.asdict(unet.PRESETS["tiny"]).items()
                  if k not in ("min_group_width", "source_pixels", "source_global")}
    old = UNet(old_fields)  # as a checkpoint written before these fields existed stores its config
    assert old.source_mlp is None and old.source_encoder.backbone.pixels is None
    assert old.source_encoder.backbone.body[1].num_groups == 8  # 8 channels in 8 groups, as trained then
    # the colour skip: two flat sources of different colours give different tokens even at random init
    red, blue = torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 64)
    red[:, 0], blue[:, 2] = 1.0, 1.0
    with torch.no_grad():
        assert (new.encode_source(red) - new.encode_source(blue)).abs().mean() > 0.1
        # the pooled source summary: K learned queries; a dropped source (zero tokens) pools to zero, so
        # guidance's "no source" branch is one fixed input, as for every other dropped condition
        tokens = new.encode_source(torch.cat([red, blue]))  # (2, N, D)
        assert new.pool_source(tokens).shape == (2, unet.PRESETS["tiny"].source_queries * tokens.shape[-1])
        assert new.pool_source(torch.zeros_like(tokens)).abs().max() == 0


def test_docstring_parameter_counts_are_the_presets():
    """The module docstring's preset table quotes each preset's counts: they must be what it builds."""
    quoted = {}
    for line in unet.__doc__.splitlines():
        words = line.split()
        if words and words[0] in unet.PRESETS and "+" in words:
            plus = words.index("+")
            quoted[words[0]] = (int(words[plus - 1].replace(",", "")), int(words[plus + 1].replace(",", "")))
    assert set(quoted) == set(unet.PRESETS)
    for preset, (body, source) in quoted.items():
        with torch.device("meta"):  # shapes only: base has ~1 B parameters
            model = UNet(preset)
        encoder = unet.count_parameters(model.source_encoder)
        assert (unet.count_parameters(model) - encoder, encoder) == (body, source), preset
