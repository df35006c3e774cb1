"""Tests of vae.py: shapes of every preset, the KL closed form, an overfit round trip, the latent
scaling, config round trips, and loading diffusers AutoencoderKL weights by their real key names.

    python -m pytest -q tests/test_vae.py

The diffusers tests do not need diffusers: `diffusers_keys` below writes out the key names and
shapes of an AutoencoderKL from its documented structure (learnt from diffusers' source), and the
expected outputs in `DIFFUSERS_REFERENCE` were computed once by diffusers 0.42.1 itself on the same
deterministic weights, so the test checks that our forward pass is diffusers' forward pass.
"""

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import save_file  # a pinned requirement (vae.load_diffusers_vae reads it)

import vae as vae_lib
from vae import VAE, VAE_PRESETS, VAEConfig, kl_to_standard_normal, load_diffusers_vae


@pytest.fixture(autouse=True)
def one_thread():
    # note: on a busy 2-core machine two OpenMP threads fight over the cores; one thread made the
    # overfit test about 6x faster there. Restored afterwards so other test files are unaffected.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------
# Shapes, KL, config
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset, size, batch", [("tiny", 64, 2), ("small", 64, 1), ("sd", 32, 1)])
def test_shapes_of_every_preset(preset, size, batch):
    torch.manual_seed(0)
    model = VAE(preset).eval()
    f, z = model.downsample_factor, model.latent_channels
    # the tiny preset has 8 latent channels (vae.py says why), the others SD's 4
    assert (f, z) == ((8 if preset == "sd" else 4), (8 if preset == "tiny" else 4))
    x = torch.rand(batch, 3, size, size) * 2 - 1
    with torch.no_grad():
        mean, logvar = model.encode(x)
        recon, mean2, _ = model(x)
        image = model.decode(torch.randn(batch, z, size // f, size // f))
    assert mean.shape == logvar.shape == (batch, z, size // f, size // f)
    assert recon.shape == image.shape == x.shape
    assert torch.equal(mean, mean2)  # forward samples around the same posterior


def test_sd_preset_has_sd_vae_parameter_count():
    # diffusers' AutoencoderKL with SD's config has 83,653,863 parameters (counted with diffusers 0.42.1)
    assert vae_lib.count_parameters(VAE("sd")) == 83_653_863


def test_kl_is_zero_for_standard_normal_and_matches_closed_form():
    zeros = torch.zeros(3, 4, 5, 5)
    assert torch.allclose(kl_to_standard_normal(zeros, zeros), torch.zeros(3))
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    assert torch.allclose(kl_to_standard_normal(mean, logvar), expected, rtol=1e-5)


def test_loss_is_recon_plus_weighted_kl_per_pixel_value():
    torch.manual_seed(0)
    model = VAE("tiny")
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    total, parts = model.loss(x, generator=torch.Generator().manual_seed(1))
    recon, mean, logvar = model(x, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(parts["recon"], (recon - x).abs().mean())
    assert torch.allclose(parts["kl"], kl_to_standard_normal(mean, logvar).mean())
    expected = parts["recon"] + model.config.kl_weight * parts["kl"] / (3 * 32 * 32)
    assert torch.allclose(total.detach(), expected)
    total.backward()  # the total carries gradients, the parts are detached for logging
    assert parts["recon"].grad_fn is None and parts["kl"].grad_fn is None


def test_config_round_trip_through_dict_and_json():
    model = VAE("tiny")
    as_dict = dataclasses.asdict(model.config)
    rebuilt = VAE(json.loads(json.dumps(as_dict)))  # tuples come back as lists
    assert rebuilt.config == model.config
    rebuilt.load_state_dict(model.state_dict(), strict=True)
    assert VAE(model.config).config == model.config
    assert VAE(model.config).config is not model.config  # a copy: measure_scaling_factor writes it
    with pytest.raises(ValueError, match="unknown VAE preset 'huge'; choices: tiny, small, sd"):
        VAE("huge")
    with pytest.raises(ValueError, match="unknown fields \\['nonsense'\\]"):
        VAE({**as_dict, "nonsense": 1})
    with pytest.raises(ValueError, match="norm_num_groups"):
        VAEConfig(block_out_channels=(30, 60), norm_num_groups=32)


def test_encode_rejects_sizes_not_divisible_by_the_factor():
    with pytest.raises(ValueError, match="divisible by 4"):
        VAE("tiny").encode(torch.zeros(1, 3, 30, 32))


# ----------------------------------------------------------------------------------------------
# Training: overfit one batch; latent scaling
# ----------------------------------------------------------------------------------------------


def flat_colour_batch(n=4, size=32, seed=0):
    """Light background with a few flat-coloured rectangles: the look of the synthetic benchmark."""
    g = torch.Generator().manual_seed(seed)
    x = torch.full((n, 3, size, size), 0.8) + 0.1 * torch.rand(n, 3, 1, 1, generator=g)
    for i in range(n):
        for _ in range(3):
            y0, x0 = torch.randint(0, size - 8, (2,), generator=g).tolist()
            h, w = torch.randint(6, size // 2, (2,), generator=g).tolist()
            x[i, :, y0:y0 + h, x0:x0 + w] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return x.clamp(-1, 1)


def test_overfit_one_batch_round_trips():
    torch.manual_seed(0)
    model = VAE("tiny")
    x = flat_colour_batch()

    def recon_error():
        with torch.no_grad():
            return (model.decode(model.encode(x)[0]) - x).abs().mean().item()

    before = recon_error()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(80):
        loss, _ = model.loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = recon_error()
    assert after < 0.2 * before, (before, after)
    assert after < 0.15, (before, after)  # under 8% of the [-1, 1] range, from about 0.9


def test_measure_scaling_factor_gives_unit_std_latents():
    torch.manual_seed(0)
    model = VAE("tiny").eval()
    x = torch.rand(6, 3, 32, 32) * 2 - 1
    raw = model.encode(x)[0].detach()
    factor = model.measure_scaling_factor(raw)
    assert math.isclose(factor, 1 / raw.std().item(), rel_tol=1e-5)
    assert model.config.scaling_factor == pytest.approx(factor)  # asdict(config) stays in step
    z = model.encode_latents(x)
    assert z.std().item() == pytest.approx(1.0, rel=1e-4)
    # decode_latents undoes the scale: same image as decoding the raw posterior mean
    assert torch.allclose(model.decode_latents(z), model.decode(raw).detach(), atol=1e-5)
    # the same factor measured from images, and from dataset-style batches of dicts
    assert model.measure_scaling_factor(x) == pytest.approx(factor, rel=1e-5)
    batches = [{"target": x[:3], "source": x[3:]}]
    assert model.measure_scaling_factor(batches) == pytest.approx(factor, rel=1e-5)
    # the buffer travels with the weights
    assert VAE(dataclasses.asdict(model.config)).scaling_factor.item() == pytest.approx(factor)


def test_shift_factor_round_trips():
    model = VAE({**dataclasses.asdict(VAE_PRESETS["tiny"]), "scaling_factor": 0.5, "shift_factor": 0.25})
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    mean = model.encode(x)[0].detach()
    assert torch.allclose(model.encode_latents(x), (mean - 0.25) * 0.5)
    assert torch.allclose(model.decode_latents((mean - 0.25) * 0.5), model.decode(mean).detach(), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Loading diffusers AutoencoderKL weights
# ----------------------------------------------------------------------------------------------

# A small AutoencoderKL: 3 levels (so the decoder's reversed up_blocks are exercised with two
# levels of equal width, which a wrong order would not reveal by shapes), 1 layer per block.
SMALL_DIFFUSERS_CONFIG = {
    "_class_name": "AutoencoderKL",
    "_diffusers_version": "0.42.1",
    "act_fn": "silu",
    "block_out_channels": [8, 16, 16],
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "sample_size": 16,
    "scaling_factor": 0.5,
    "shift_factor": None,
    "latents_mean": None,
    "latents_std": None,
    "force_upcast": True,
    "mid_block_add_attention": True,
    "use_quant_conv": True,
    "use_post_quant_conv": True,
}


def resnet_keys(prefix, cin, cout):
    keys = {f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
            f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
            f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
            f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,)}
    if cin != cout:
        keys.update({f"{prefix}.conv_shortcut.weight": (cout, cin, 1, 1), f"{prefix}.conv_shortcut.bias": (cout,)})
    return keys


def mid_keys(prefix, c):
    attn = f"{prefix}.attentions.0"
    keys = {**resnet_keys(f"{prefix}.resnets.0", c, c), **resnet_keys(f"{prefix}.resnets.1", c, c),
            f"{attn}.group_norm.weight": (c,), f"{attn}.group_norm.bias": (c,)}
    for proj in ("to_q", "to_k", "to_v", "to_out.0"):
        keys.update({f"{attn}.{proj}.weight": (c, c), f"{attn}.{proj}.bias": (c,)})
    return keys


def conv_keys(name, cout, cin, k):
    return {f"{name}.weight": (cout, cin, k, k), f"{name}.bias": (cout,)}


def diffusers_keys(cfg):
    """Key -> shape of diffusers' AutoencoderKL state dict, written from its documented structure:
    encoder down_blocks in resolution order; decoder up_blocks lowest resolution first, with
    layers_per_block + 1 resnets each; downsamplers.0.conv / upsamplers.0.conv; one mid block."""
    ch, z, layers = cfg["block_out_channels"], cfg["latent_channels"], cfg["layers_per_block"]
    n = len(ch)
    keys = conv_keys("encoder.conv_in", ch[0], cfg["in_channels"], 3)
    for i in range(n):
        for m in range(layers):
            cin = ch[max(i - 1, 0)] if m == 0 else ch[i]
            keys.update(resnet_keys(f"encoder.down_blocks.{i}.resnets.{m}", cin, ch[i]))
        if i < n - 1:
            keys.update(conv_keys(f"encoder.down_blocks.{i}.downsamplers.0.conv", ch[i], ch[i], 3))
    keys.update(mid_keys("encoder.mid_block", ch[-1]))
    keys.update({"encoder.conv_norm_out.weight": (ch[-1],), "encoder.conv_norm_out.bias": (ch[-1],)})
    keys.update(conv_keys("encoder.conv_out", 2 * z, ch[-1], 3))
    keys.update(conv_keys("quant_conv", 2 * z, 2 * z, 1))
    keys.update(conv_keys("post_quant_conv", z, z, 1))
    keys.update(conv_keys("decoder.conv_in", ch[-1], z, 3))
    keys.update(mid_keys("decoder.mid_block", ch[-1]))
    rev = list(reversed(ch))
    for j in range(n):
        for m in range(layers + 1):
            cin = rev[max(j - 1, 0)] if m == 0 else rev[j]
            keys.update(resnet_keys(f"decoder.up_blocks.{j}.resnets.{m}", cin, rev[j]))
        if j < n - 1:
            keys.update(conv_keys(f"decoder.up_blocks.{j}.upsamplers.0.conv", rev[j], rev[j], 3))
    keys.update({"decoder.conv_norm_out.weight": (ch[0],), "decoder.conv_norm_out.bias": (ch[0],)})
    keys.update(conv_keys("decoder.conv_out", cfg["out_channels"], ch[0], 3))
    return keys


def deterministic_weights(keys):
    """Weights from a formula (no RNG, so identical everywhere): sines scaled like a sane init."""
    weights = {}
    for i, (name, shape) in enumerate(sorted(keys.items())):
        wave = torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * 0.731 + 1.3 * i)
        if "norm" in name and name.endswith(".weight"):
            value = 1.0 + 0.1 * wave
        elif len(shape) > 1:
            value = wave * (1.5 / math.sqrt(math.prod(shape[1:])))
        else:
            value = 0.1 * wave
        weights[name] = value.reshape(shape).float()
    return weights


def save_diffusers_folder(folder, weights, config=SMALL_DIFFUSERS_CONFIG):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file(weights, str(folder / "diffusion_pytorch_model.safetensors"))
    return folder


def reference_inputs():
    x = torch.sin(torch.arange(2 * 3 * 16 * 16, dtype=torch.float64) * 0.37).reshape(2, 3, 16, 16).float()
    z = torch.cos(torch.arange(2 * 4 * 4 * 4, dtype=torch.float64) * 0.53).reshape(2, 4, 4, 4).float()
    return x, z


# Computed by diffusers 0.42.1 (AutoencoderKL.from_pretrained on the folder the test writes):
# encode(x).latent_dist.mean / .logvar and decode(z).sample, summed, and a few single values.
DIFFUSERS_REFERENCE = {
    "mean_sum": -16.790127,
    "mean_abs_sum": 16.790127,
    "logvar_sum": -6.951598,
    "logvar_abs_sum": 10.989032,
    "image_sum": -62.187134,
    "image_abs_sum": 799.895081,
    "image_0_0_3_5": 0.367890,
    "image_1_2_15_0": 0.525702,
    "mean_0_1_2_3": -0.145574,
}


def test_diffusers_key_names_all_map_and_load_strictly(tmp_path):
    keys = diffusers_keys(SMALL_DIFFUSERS_CONFIG)
    weights = deterministic_weights(keys)
    model = load_diffusers_vae(save_diffusers_folder(tmp_path / "vae", weights))
    ours = {k: v for k, v in model.state_dict().items() if k not in ("scaling_factor", "shift_factor")}
    assert len(ours) == len(weights)  # one of ours per tensor of the file, none left over
    assert model.scaling_factor.item() == 0.5 and model.shift_factor.item() == 0.0
    # spot checks by hand: the decoder's up_blocks.0 is its lowest-resolution level (our last)
    enc, dec = model.encoder, model.decoder
    pairs = [
        (dec.levels[2].blocks[0].conv1.weight, "decoder.up_blocks.0.resnets.0.conv1.weight"),
        (dec.levels[0].blocks[1].conv2.bias, "decoder.up_blocks.2.resnets.1.conv2.bias"),
        (dec.levels[1].resample.conv.weight, "decoder.up_blocks.1.upsamplers.0.conv.weight"),
        (enc.levels[1].blocks[0].skip.weight, "encoder.down_blocks.1.resnets.0.conv_shortcut.weight"),
        (enc.levels[0].resample.conv.weight, "encoder.down_blocks.0.downsamplers.0.conv.weight"),
        (enc.mid.attn.out.weight, "encoder.mid_block.attentions.0.to_out.0.weight"),
        (dec.mid.block2.norm1.bias, "decoder.mid_block.resnets.1.norm1.bias"),
        (model.to_moments.weight, "quant_conv.weight"),
        (model.from_latent.bias, "post_quant_conv.bias"),
    ]
    for ours_tensor, name in pairs:
        assert torch.equal(ours_tensor, weights[name]), name
    # the mapping function agrees with the hand-written structure on every key
    assert {vae_lib.diffusers_name(k, 3) for k in ours} == set(weights)


def test_diffusers_old_attention_names_load_the_same(tmp_path):
    weights = deterministic_weights(diffusers_keys(SMALL_DIFFUSERS_CONFIG))
    old = {}
    for name, value in weights.items():
        for new, legacy in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            name = name.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
        old[name] = value
    assert any(".query." in k for k in old)
    a = load_diffusers_vae(save_diffusers_folder(tmp_path / "new", weights))
    b = load_diffusers_vae(save_diffusers_folder(tmp_path / "old", old))
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_diffusers_forward_matches_diffusers_own_outputs(tmp_path):
    weights = deterministic_weights(diffusers_keys(SMALL_DIFFUSERS_CONFIG))
    model = load_diffusers_vae(save_diffusers_folder(tmp_path / "vae", weights))
    x, z = reference_inputs()
    with torch.no_grad():
        mean, logvar = model.encode(x)
        image = model.decode(z)
    got = {
        "mean_sum": mean.sum().item(), "mean_abs_sum": mean.abs().sum().item(),
        "logvar_sum": logvar.sum().item(), "logvar_abs_sum": logvar.abs().sum().item(),
        "image_sum": image.sum().item(), "image_abs_sum": image.abs().sum().item(),
        "image_0_0_3_5": image[0, 0, 3, 5].item(), "image_1_2_15_0": image[1, 2, 15, 0].item(),
        "mean_0_1_2_3": mean[0, 1, 2, 3].item(),
    }
    for key, expected in DIFFUSERS_REFERENCE.items():
        assert got[key] == pytest.approx(expected, rel=1e-4, abs=1e-4), key


def test_diffusers_mismatched_files_give_clear_errors(tmp_path):
    weights = deterministic_weights(diffusers_keys(SMALL_DIFFUSERS_CONFIG))
    missing = dict(weights)
    del missing["decoder.up_blocks.0.resnets.0.conv1.weight"]
    with pytest.raises(ValueError, match="missing \\['decoder.up_blocks.0.resnets.0.conv1.weight'\\]"):
        load_diffusers_vae(save_diffusers_folder(tmp_path / "missing", missing))
    extra = {**weights, "encoder.extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="unexpected \\['encoder.extra.weight'\\]"):
        load_diffusers_vae(save_diffusers_folder(tmp_path / "extra", extra))
    wrong = {**weights, "quant_conv.weight": torch.zeros(3, 3, 1, 1)}
    with pytest.raises(ValueError, match="quant_conv.weight has shape"):
        load_diffusers_vae(save_diffusers_folder(tmp_path / "wrong", wrong))
    other = {**SMALL_DIFFUSERS_CONFIG, "_class_name": "VQModel"}
    with pytest.raises(ValueError, match="AutoencoderKL"):
        load_diffusers_vae(save_diffusers_folder(tmp_path / "vq", weights, other))


def test_diffusers_bad_paths_give_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-folder.*config.json.*diffusion_pytorch_model.safetensors"):
        load_diffusers_vae(tmp_path / "no-such-folder")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(SMALL_DIFFUSERS_CONFIG))
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        load_diffusers_vae(tmp_path / "empty")


def test_diffusers_pipeline_folder_with_vae_subfolder(tmp_path):
    weights = deterministic_weights(diffusers_keys(SMALL_DIFFUSERS_CONFIG))
    save_diffusers_folder(tmp_path / "pipeline" / "vae", weights)
    assert load_diffusers_vae(tmp_path / "pipeline").config.block_out_channels == (8, 16, 16)
