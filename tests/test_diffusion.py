"""Tests for diffusion.py: closed forms, the DDIM update written twice, oracles, guidance, NFE counts.

Run: python -m pytest -q tests/test_diffusion.py   (a few seconds on a 2-core CPU)
"""
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the flat repository root

import diffusion as D  # noqa: E402
from diffusion import Diffusion, nfe  # noqa: E402
from guidance import drop_conditions, guidance_branches, guided_output  # noqa: E402


# ----------------------------------------------------------------------------- helpers

def numpy_alphas_cumprod(schedule: str, total: int = 1000) -> np.ndarray:
    """The schedule from its definition, in float64 numpy, with an explicit running product."""
    if schedule == "linear":
        betas = np.linspace(1e-4, 0.02, total)
    else:
        betas = np.linspace(np.sqrt(0.00085), np.sqrt(0.012), total) ** 2
    out, running = np.empty(total), 1.0
    for i, beta in enumerate(betas):
        running *= 1.0 - beta
        out[i] = running
    return out


def hand_ddim(out, x_t, a_t, a_prev, eta, noise, prediction):
    """DDIM eq. (12) with sigma from eq. (16), written out in numpy (diffusers' DDIMScheduler.step)."""
    if prediction == "eps":
        eps = out
        x0 = (x_t - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
    else:  # v = sqrt(a) eps - sqrt(1 - a) x0
        x0 = np.sqrt(a_t) * x_t - np.sqrt(1 - a_t) * out
        eps = np.sqrt(a_t) * out + np.sqrt(1 - a_t) * x_t
    sigma = eta * np.sqrt((1 - a_prev) / (1 - a_t)) * np.sqrt(1 - a_t / a_prev)
    return np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev - sigma ** 2) * eps + sigma * noise


class PointOracle:
    """The exact eps- (or v-) prediction for data that is a single point x0*: reads the noise off x_t."""

    def __init__(self, diffusion: Diffusion, point: torch.Tensor):
        self.d, self.point = diffusion, point

    def __call__(self, x_t, t, **cond):
        a = self.d._abar(t.round().long(), x_t)
        eps = (x_t - a.sqrt() * self.point) / (1 - a).sqrt()
        if self.d.prediction == "eps":
            return eps
        return a.sqrt() * eps - (1 - a).sqrt() * self.point


class CountingModel:
    """A model whose output says which conditions it saw; it counts calls and batch rows."""

    def __init__(self):
        self.calls, self.rows = 0, 0

    def __call__(self, x, t, pose=None, src_tokens=None, fusion=None):
        self.calls += 1
        self.rows += x.shape[0]
        out = 0.5 * x + (t / 1000).view(-1, *([1] * (x.dim() - 1)))
        for scale, c in ((1.0, pose), (10.0, src_tokens), (100.0, fusion)):
            if c is not None:
                out = out + scale * c.flatten(1).mean(1).view(-1, *([1] * (x.dim() - 1)))
        return out


def make_cond(batch=3, keys=("pose", "src_tokens", "fusion"), seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"pose": (batch, 3, 8, 8), "src_tokens": (batch, 5, 6), "fusion": (batch, 7)}
    return {k: torch.rand(shapes[k], generator=g) + 0.1 for k in keys}


# ----------------------------------------------------------------------------- schedule and q_sample

@pytest.mark.parametrize("schedule", ["linear", "scaled_linear"])
def test_schedule_matches_its_definition(schedule):
    d = Diffusion(schedule=schedule)
    assert d.alphas_cumprod.shape == (1000,)
    np.testing.assert_allclose(d.alphas_cumprod.double().numpy(), numpy_alphas_cumprod(schedule), rtol=1e-5)
    lo, hi = (1e-4, 0.02) if schedule == "linear" else (0.00085, 0.012)
    assert d.betas[0].item() == pytest.approx(lo, rel=1e-5) and d.betas[-1].item() == pytest.approx(hi, rel=1e-5)


def test_q_sample_mean_and_variance():
    d = Diffusion()
    g = torch.Generator().manual_seed(0)
    n, x0 = 200_000, torch.full((200_000, 1), 1.5)
    for step in (10, 500, 990):
        t = torch.full((n,), step)
        x_t = d.q_sample(x0, t, torch.randn(x0.shape, generator=g))
        a = numpy_alphas_cumprod("scaled_linear")[step]
        assert x_t.mean().item() == pytest.approx(np.sqrt(a) * 1.5, abs=0.01)
        assert x_t.var().item() == pytest.approx(1 - a, rel=0.02, abs=2e-4)


def test_timestep_spacing():
    d = Diffusion(spacing="trailing")
    assert d.timesteps(20) == list(range(999, 0, -50))  # starts at the pure-noise step 999
    assert d.timesteps(1000) == list(range(999, -1, -1))
    # FPDM's default: SD's "leading" spacing with steps_offset 1
    assert Diffusion().timesteps(20) == list(range(951, 0, -50))
    assert Diffusion(spacing="leading", steps_offset=0).timesteps(20) == list(range(950, -1, -50))
    for steps in (1, 3, 7, 50):
        ts = d.timesteps(steps)
        assert len(ts) == steps and ts[0] == 999 and all(a > b for a, b in zip(ts, ts[1:]))
    with pytest.raises(ValueError, match="steps"):
        d.timesteps(1001)


# ----------------------------------------------------------------------------- the update, two ways

@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("eta", [0.0, 0.7])
@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_ddim_step_matches_hand_formula(prediction, eta, set_alpha_to_one):
    d = Diffusion(prediction=prediction, set_alpha_to_one=set_alpha_to_one)
    table = numpy_alphas_cumprod("scaled_linear")
    rng = np.random.default_rng(0)
    for t, t_prev in ((999, 949), (500, 300), (49, -1)):
        x_t, out, noise = (rng.standard_normal((2, 4, 3, 3)) for _ in range(3))
        a_prev = table[t_prev] if t_prev >= 0 else (1.0 if set_alpha_to_one else table[0])
        want = hand_ddim(out, x_t, table[t], a_prev, eta, noise, prediction)
        got = d.ddim_step(torch.tensor(out), t, t_prev, torch.tensor(x_t), eta=eta, noise=torch.tensor(noise))
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_ddpm_step_equals_ddim_with_eta_one():
    d = Diffusion()
    g = torch.Generator().manual_seed(1)
    for t, t_prev in ((999, 899), (400, 350), (20, -1)):
        x_t, out, noise = (torch.randn(2, 4, 5, 5, generator=g, dtype=torch.float64) for _ in range(3))
        ddpm = d.ddpm_step(out, t, t_prev, x_t, noise=noise)
        ddim = d.ddim_step(out, t, t_prev, x_t, eta=1.0, noise=noise)
        torch.testing.assert_close(ddpm, ddim, rtol=1e-9, atol=1e-9)


def test_ddim_step_accepts_per_sample_steps():
    d = Diffusion()
    x_t, out = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    both = d.ddim_step(out, torch.tensor([999, 500]), torch.tensor([900, -1]), x_t)
    torch.testing.assert_close(both[0], d.ddim_step(out[:1], 999, 900, x_t[:1])[0])
    torch.testing.assert_close(both[1], d.ddim_step(out[1:], 500, -1, x_t[1:])[0])


# ----------------------------------------------------------------------------- samplers with an oracle

@pytest.mark.parametrize("prediction", ["eps", "v"])
@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddpm", 0.0)])
def test_oracle_sampling_returns_the_data_point(prediction, sampler, eta):
    d = Diffusion(prediction=prediction)
    g = torch.Generator().manual_seed(0)
    point = torch.randn(1, 4, 6, 6, generator=g).expand(3, -1, -1, -1)  # (B, C, h, w)
    noise = torch.randn(3, 4, 6, 6, generator=g)
    x = d.sample(PointOracle(d, point), noise, {}, steps=5, sampler=sampler, eta=eta, generator=g)
    torch.testing.assert_close(x, point, rtol=1e-4, atol=1e-4)


def test_final_alpha_from_sd_configs_lands_next_to_the_point():
    d = Diffusion(set_alpha_to_one=False, spacing="trailing")
    point, noise = torch.ones(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    x = d.sample(PointOracle(d, point), noise, None, steps=4, sampler="ddim")
    a0, a_top = d.alphas_cumprod[0].item(), d.alphas_cumprod[999].item()
    eps = (noise - a_top ** 0.5 * point) / (1 - a_top) ** 0.5  # the oracle's eps, kept along an eta = 0 path
    want = a0 ** 0.5 * point + (1 - a0) ** 0.5 * eps  # the last step goes to alpha_bar_0, not to 1
    torch.testing.assert_close(x, want, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- loss

@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_zero_for_oracle_positive_otherwise(prediction):
    d = Diffusion(prediction=prediction, offset_noise=0.1)
    g = torch.Generator().manual_seed(0)
    point = torch.randn(1, 4, 6, 6, generator=g).expand(8, -1, -1, -1)
    cond = make_cond(batch=8)
    loss, per_sample, t_frac = d.loss(PointOracle(d, point), point, cond, generator=g)
    assert per_sample.shape == (8,) and t_frac.shape == (8,)
    assert ((t_frac >= 0) & (t_frac <= 1)).all()
    assert loss.item() < 1e-8
    zero_loss, zero_per_sample, _ = d.loss(lambda x, t, **c: torch.zeros_like(x), point, cond, generator=g)
    assert zero_loss.item() > 0.1 and (zero_per_sample > 0).all()
    assert zero_loss.item() == pytest.approx(zero_per_sample.mean().item())


def test_loss_gradients_flow_to_the_model():
    d = Diffusion()
    layer = torch.nn.Conv2d(4, 4, 1)
    loss, _, _ = d.loss(lambda x, t, **c: layer(x), torch.randn(2, 4, 4, 4), {})
    loss.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- condition dropping

def test_drop_conditions_rate_and_exact_zeros():
    batch = 4000
    cond = make_cond(batch=batch)
    g = torch.Generator().manual_seed(0)
    dropped = drop_conditions(cond, {"pose": 0.2, "src_tokens": 0.5, "fusion": 0.0}, generator=g)
    for key, p in (("pose", 0.2), ("src_tokens", 0.5)):
        gone = (dropped[key].flatten(1) == 0).all(1)  # (B,) rows that are exactly zero
        kept = ~gone
        assert gone.float().mean().item() == pytest.approx(p, abs=0.03)
        torch.testing.assert_close(dropped[key][kept], cond[key][kept], rtol=0, atol=0)
    torch.testing.assert_close(dropped["fusion"], cond["fusion"], rtol=0, atol=0)
    pose_gone = (dropped["pose"].flatten(1) == 0).all(1)
    src_gone = (dropped["src_tokens"].flatten(1) == 0).all(1)
    # independent per key: both dropped about 0.2 x 0.5 of the time
    assert (pose_gone & src_gone).float().mean().item() == pytest.approx(0.1, abs=0.03)
    all_gone = drop_conditions(cond, {"pose": 1.0})
    assert (all_gone["pose"] == 0).all()
    assert drop_conditions({"pose": None}, {"pose": 0.5}) == {}
    with pytest.raises(ValueError, match="unknown key"):
        drop_conditions({"text": torch.ones(2)}, {})
    with pytest.raises(ValueError, match="probability"):
        drop_conditions(cond, {"pose": 1.5})


# ----------------------------------------------------------------------------- guidance

def branch_outputs(model, x, t, cond):
    """u, c_src, c_full computed one by one, the reference for the batched mixture."""
    zeros = {k: torch.zeros_like(v) for k, v in cond.items()}
    src = {k: (v if k in ("pose", "src_tokens") else torch.zeros_like(v)) for k, v in cond.items()}
    return model(x, t, **zeros), model(x, t, **src), model(x, t, **cond)


def test_cfg_weights_one_is_the_conditional_call():
    model, cond = CountingModel(), make_cond()
    x, t = torch.randn(3, 4, 2, 2), torch.full((3,), 500.0)
    out = guided_output(model, x, t, cond, 1.0, 1.0)
    assert (model.calls, model.rows) == (1, 3)
    torch.testing.assert_close(out, CountingModel()(x, t, **cond))


def test_cumulative_cfg_three_branches_in_one_forward():
    model, cond = CountingModel(), make_cond()
    x, t = torch.randn(3, 4, 2, 2), torch.full((3,), 500.0)
    out = guided_output(model, x, t, cond, w_src=2.0, w_fus=3.5)
    assert (model.calls, model.rows) == (1, 9)  # one batched call, 3 branches x B
    u, c_src, c_full = branch_outputs(CountingModel(), x, t, cond)
    torch.testing.assert_close(out, u + 2.0 * (c_src - u) + 3.5 * (c_full - c_src))


def test_equal_weights_collapse_to_plain_cfg():
    model, cond = CountingModel(), make_cond()
    x, t = torch.randn(3, 4, 2, 2), torch.full((3,), 500.0)
    out = guided_output(model, x, t, cond, w_src=2.5, w_fus=2.5)
    assert (model.calls, model.rows) == (1, 6)  # the middle branch cancels, so it is not computed
    u, _, c_full = branch_outputs(CountingModel(), x, t, cond)
    torch.testing.assert_close(out, u + 2.5 * (c_full - u))


def test_two_branches_without_fusion():
    model, cond = CountingModel(), make_cond(keys=("pose", "src_tokens"))
    x, t = torch.randn(3, 4, 2, 2), torch.full((3,), 500.0)
    out = guided_output(model, x, t, cond, w_src=3.0, w_fus=7.0)  # w_fus has nothing to act on
    assert (model.calls, model.rows) == (1, 6)
    u, c, _ = branch_outputs(CountingModel(), x, t, cond)
    torch.testing.assert_close(out, u + 3.0 * (c - u))


def test_no_conditions_one_plain_call():
    model = CountingModel()
    x, t = torch.randn(3, 4, 2, 2), torch.full((3,), 10.0)
    out = guided_output(model, x, t, {}, w_src=4.0, w_fus=2.0)
    assert (model.calls, model.rows) == (1, 3)
    torch.testing.assert_close(out, CountingModel()(x, t))


def test_scalar_time_is_shared_by_the_batch():
    cond, x = make_cond(), torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(guided_output(CountingModel(), x, 250.0, cond, 2.0, 3.0),
                               guided_output(CountingModel(), x, torch.full((3,), 250.0), cond, 2.0, 3.0))


def test_guidance_branch_weights_sum_to_one():
    for keys in [(), ("pose",), ("fusion",), ("pose", "src_tokens", "fusion")]:
        for w_src, w_fus in [(1, 1), (2, 2), (2, 3), (0, 1), (1, 4)]:
            branches = guidance_branches(keys, w_src, w_fus)
            assert sum(w for _, w in branches) == pytest.approx(1.0)
            assert len({frozenset(k) for k, _ in branches}) == len(branches)


# ----------------------------------------------------------------------------- sample(): NFE and trajectory

@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("keys,w_src,w_fus", [
    (("pose", "src_tokens", "fusion"), 2.0, 3.0),
    (("pose", "src_tokens", "fusion"), 2.0, 2.0),
    (("pose", "src_tokens", "fusion"), 1.0, 1.0),
    (("pose", "src_tokens"), 2.0, 2.0),
    ((), 2.0, 2.0),
])
def test_nfe_matches_counted_evaluations(sampler, keys, w_src, w_fus):
    d, model, batch, steps = Diffusion(), CountingModel(), 2, 6
    cond = make_cond(batch=batch, keys=keys)
    d.sample(model, torch.randn(batch, 4, 2, 2), cond, steps=steps, sampler=sampler, w_src=w_src, w_fus=w_fus)
    assert model.calls == steps  # one batched forward per step
    assert model.rows // batch == nfe(steps, sampler, keys, w_src, w_fus)


def test_default_nfe():
    fpdm = ("pose", "src_tokens", "fusion")
    assert D.DEFAULT_STEPS == 20
    assert nfe(D.DEFAULT_STEPS, "ddim", fpdm, **D.DEFAULT_GUIDANCE) == 40  # equal weights: 2 branches
    assert nfe(D.DEFAULT_STEPS, "ddim", fpdm, 2.0, 3.0) == 60  # cumulative: 3 branches
    assert nfe(50, "ddim", fpdm, 2.0, 3.0) == 150


def test_command_line_table_agrees_with_counting(capsys):
    for label, predicted, counted, calls in D.nfe_table(steps=5):
        assert predicted == counted and calls == 5
    D.main(["--steps", "3"])
    assert "| ddim 3 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        D.main(["--steps", "0"])


def test_return_trajectory_lengths():
    d = Diffusion()
    noise = torch.randn(2, 4, 3, 3)
    x, traj = d.sample(CountingModel(), noise, make_cond(batch=2), steps=7, w_src=2.0, w_fus=3.0,
                       return_trajectory=True)
    assert len(traj) == 8 and traj[0] is noise
    torch.testing.assert_close(traj[-1], x)
    assert all(s.shape == noise.shape for s in traj)


def test_invalid_arguments_raise_value_error():
    with pytest.raises(ValueError, match="schedule"):
        Diffusion(schedule="cosine")
    with pytest.raises(ValueError, match="prediction"):
        Diffusion(prediction="x0")
    with pytest.raises(ValueError, match="spacing"):
        Diffusion(spacing="linspace")
    with pytest.raises(ValueError, match="sampler"):
        Diffusion().sample(CountingModel(), torch.randn(1, 4, 2, 2), {}, steps=2, sampler="euler")
    with pytest.raises(ValueError, match="sampler"):
        nfe(10, "plms")


def test_to_device_keeps_working():
    d = Diffusion().to("cpu")
    assert d.alphas_cumprod.device.type == "cpu"
    x = d.q_sample(torch.zeros(2, 1), torch.tensor([0, 999]), torch.ones(2, 1))
    assert x.shape == (2, 1)


# ----------------------------------------------------------------------------- FPDM's release sampler, as diffusers runs it

# diffusers 0.x DDPMScheduler(scaled_linear 0.00085 -> 0.012, clip_sample=False, steps_offset=1,
# timestep_spacing="leading"), set_timesteps(20), .step(out, t, x, generator=seed 5).prev_sample,
# printed once with diffusers installed (the inputs are rebuilt below from the same seeds).
DIFFUSERS_DDPM_STEPS = {
    951: [2.1010847091674805, -0.551936149597168, -2.886944532394409, 1.0750066041946411,
          -1.0775911808013916, -1.1858386993408203, 0.21409249305725098, 0.5393846035003662],
    501: [1.7117784023284912, -0.47973328828811646, -2.5215797424316406, 0.8748435974121094,
          -1.0701849460601807, -1.0295708179473877, 0.13831448554992676, 0.5790383219718933],
    51: [1.7180639505386353, -0.23629708588123322, -2.123981475830078, 0.5695047974586487,
         -0.9305782318115234, -1.5970979928970337, 0.592626690864563, 0.8008168339729309],
    1: [1.5720263719558716, -0.2770152986049652, -2.155998468399048, 0.5613954067230225,
        -1.0500545501708984, -1.44525945186615, 0.4479464590549469, 0.8336719274520874],
}


def _ddpm_inputs():
    g = torch.Generator().manual_seed(0)
    x, out = torch.randn(1, 2, 2, 2, generator=g), torch.randn(1, 2, 2, 2, generator=g)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))  # what diffusers draws
    return x, out, noise


def test_default_sampler_is_fpdm_release():
    assert (D.DEFAULT_SAMPLER, D.DEFAULT_STEPS, D.DEFAULT_GUIDANCE) == ("ddpm", 20, {"w_src": 2.0, "w_fus": 2.0})
    assert nfe(D.DEFAULT_STEPS, D.DEFAULT_SAMPLER, D.COND_KEYS, **D.DEFAULT_GUIDANCE) == 40  # 2 branches


@pytest.mark.parametrize("t", sorted(DIFFUSERS_DDPM_STEPS))
def test_ddpm_step_equals_diffusers_ddpm_scheduler(t):
    d = Diffusion()  # defaults: leading spacing, steps_offset 1
    ts = d.timesteps(20)
    t_prev = ts[ts.index(t) + 1] if t != ts[-1] else -1
    x, out, noise = _ddpm_inputs()
    ours = d.ddpm_step(out, t, t_prev, x, noise=noise).flatten()
    torch.testing.assert_close(ours, torch.tensor(DIFFUSERS_DDPM_STEPS[t]), rtol=0, atol=2e-6)


def test_ddpm_step_equals_live_diffusers_when_installed():
    schedulers = pytest.importorskip("diffusers")  # not a requirement: the pinned test above stands in
    s = schedulers.DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                 beta_schedule="scaled_linear", clip_sample=False, steps_offset=1,
                                 timestep_spacing="leading")
    s.set_timesteps(20)
    d = Diffusion()
    assert s.timesteps.tolist() == d.timesteps(20)
    x, out, noise = _ddpm_inputs()
    ts = d.timesteps(20)
    for i, t in enumerate(ts):
        ref = s.step(out, t, x, generator=torch.Generator().manual_seed(5)).prev_sample
        ours = d.ddpm_step(out, t, ts[i + 1] if i + 1 < len(ts) else -1, x, noise=noise)
        torch.testing.assert_close(ours, ref, rtol=0, atol=2e-6)


# ----------------------------------------------------------------------------- bf16 latents (the CUDA autocast path)

@pytest.mark.parametrize("t", [0, 1, 2, 5, 20])
def test_noise_level_is_exact_for_bf16_latents(t):
    """The noise implied by (x_t, x0, t) has unit std even when x0 arrives in bf16.

    Before the float32 rule, bf16 alpha_bar rounded to 1 at t = 0 and 1: no noise at all.
    """
    d = Diffusion()
    x0 = torch.randn(64, 4, 8, 8, generator=torch.Generator().manual_seed(t)).bfloat16()
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(100 + t))
    x_t = d.q_sample(x0, torch.full((64,), t), noise)
    assert x_t.dtype == torch.float32
    a = d.alphas_cumprod.double()[t]
    implied = (x_t.double() - a.sqrt() * x0.double()) / (1 - a).sqrt()
    assert implied.std().item() == pytest.approx(1.0, abs=0.02)


def test_loss_trains_on_float32_whatever_arrives():
    seen = {}

    def model(x_t, t, **cond):
        seen["dtype"], seen["t"] = x_t.dtype, t
        return torch.zeros_like(x_t)

    x0 = torch.randn(8, 4, 4, 4).bfloat16()
    loss, per_sample, _ = Diffusion().loss(model, x0, None, torch.Generator().manual_seed(0))
    assert seen["dtype"] == torch.float32 and per_sample.dtype == torch.float32


# ----------------------------------------------------------------------------- joint dropping

def test_joint_drop_trains_the_unconditional_branch():
    n = 20_000
    cond = {"pose": torch.ones(n, 2), "src_tokens": torch.ones(n, 3, 2), "fusion": torch.ones(n, 2)}
    g = torch.Generator().manual_seed(0)
    dropped = drop_conditions(cond, D.FPDM_DROP_PROBS, g, joint=0.1)
    gone = {k: (v.flatten(1) == 0).all(dim=1) for k, v in dropped.items()}  # (n,) per key
    all_gone = gone["pose"] & gone["src_tokens"] & gone["fusion"]
    # joint 0.1, else three independent 0.2 drops: 0.1 + 0.9 * 0.008 = 0.1072 (0.008 without it)
    assert all_gone.float().mean().item() == pytest.approx(0.1 + 0.9 * 0.2 ** 3, abs=0.006)
    # each key alone: 0.1 + 0.9 * 0.2 = 0.28
    for key in cond:
        assert gone[key].float().mean().item() == pytest.approx(0.28, abs=0.01)


def test_joint_drop_zero_draws_exactly_as_independent_drops():
    cond = {"pose": torch.randn(16, 2), "src_tokens": torch.randn(16, 3, 2)}
    a = drop_conditions(cond, D.FPDM_DROP_PROBS, torch.Generator().manual_seed(3))
    b = drop_conditions(cond, D.FPDM_DROP_PROBS, torch.Generator().manual_seed(3), joint=0.0)
    for key in cond:
        assert torch.equal(a[key], b[key])


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_denoise_once_with_an_oracle_returns_the_clean_latents(prediction):
    """One call at any level gives x0 back when the model knows the answer (eps or v written from x0)."""
    d = Diffusion(prediction=prediction)
    x0 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))

    def oracle(x_t, t, **cond):
        a = d.alphas_cumprod[t.long()].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return eps if prediction == "eps" else a.sqrt() * eps - (1 - a).sqrt() * x0

    for level in (0.0, 0.3, 1.0):
        assert d.step_at(level) == round(level * 999)
        assert torch.allclose(d.denoise_once(oracle, x0, noise, level, None), x0, atol=1e-4)


def test_schedule_table_lives_on_the_latents_device():
    # the alpha_bar table is copied to the latents' device once; no sampling step reads the host table
    # again (on CUDA each read would be a host-to-device copy per step). The meta device stands in for
    # a GPU here: a tensor there has a device but no data.
    d = Diffusion(prediction="v")
    noise = torch.zeros(2, 4, 2, 2, device="meta")
    model = lambda x, t, **cond: torch.zeros_like(x)  # noqa: E731
    d.sample(model, noise, None, 5, "ddpm")
    assert list(d._tables) == [(torch.device("meta"), torch.float32)]
    d.alphas_cumprod = None  # the host copy is gone: a step that still copied from it would fail
    for sampler in ("ddpm", "ddim"):
        assert d.sample(model, noise, None, 5, sampler).device.type == "meta"
    assert d._abar(10, noise).device.type == "meta" and d._abar(torch.tensor([3, -1]), noise).shape == (2, 1, 1, 1)
