"""Tests for flow_matching.py: the path, the exact Gaussian velocity field as an oracle, solvers, guidance.

Run: python -m pytest -q tests/test_flow_matching.py   (a few seconds on a 2-core CPU)

For data N(mu, s^2) and noise N(0, 1) the marginal velocity of the path
x_t = a x0 + t x1 (a = 1 - (1 - sigma_min) t) is linear in x:
    v(x, t) = mu + (t s^2 - (1 - sigma_min) a) / (a^2 + t^2 s^2) * (x - t mu),
and its flow sends each noise value x0 to mu + sqrt(s^2 + sigma_min^2) x0, so every sampler can be
checked sample by sample against the exact map.
"""
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the flat repository root

import flow_matching as F  # noqa: E402
from flow_matching import FlowMatching, nfe, shift_time  # noqa: E402

MU, S = 2.0, 0.5


class GaussianVelocity:
    """The exact marginal velocity for data N(mu, s^2); t arrives in [0, 1000] like the UNet's."""

    def __init__(self, mu=MU, s=S, sigma_min=0.0):
        self.mu, self.s, self.sigma_min = mu, s, sigma_min
        self.calls, self.rows = 0, 0

    def __call__(self, x, t, **cond):
        self.calls += 1
        self.rows += x.shape[0]
        t = (t.double() / 1000.0).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)  # (B, 1, ...)
        a = 1.0 - (1.0 - self.sigma_min) * t
        gain = (t * self.s ** 2 - (1.0 - self.sigma_min) * a) / (a ** 2 + t ** 2 * self.s ** 2)
        return self.mu + gain * (x - t * self.mu)


class PointVelocity:
    """The exact conditional velocity when the data is one point x1*: recover x0 from x_t, return u."""

    def __init__(self, point, sigma_min=0.0):
        self.point, self.sigma_min = point, sigma_min

    def __call__(self, x, t, **cond):
        t = (t.double() / 1000.0).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        x0 = (x - t * self.point) / (1.0 - (1.0 - self.sigma_min) * t)
        return self.point - (1.0 - self.sigma_min) * x0


class CountingModel:
    def __init__(self):
        self.calls, self.rows = 0, 0

    def __call__(self, x, t, pose=None, src_tokens=None, fusion=None):
        self.calls += 1
        self.rows += x.shape[0]
        out = -x + (t / 1000).view(-1, *([1] * (x.dim() - 1)))
        for scale, c in ((1.0, pose), (10.0, src_tokens), (100.0, fusion)):
            if c is not None:
                out = out + scale * c.flatten(1).mean(1).view(-1, *([1] * (x.dim() - 1)))
        return out


def noise_and_exact(n=20_000, sigma_min=0.0, seed=0):
    x0 = torch.randn(n, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x0, MU + math.sqrt(S ** 2 + sigma_min ** 2) * x0


def make_cond(batch=2, keys=("pose", "src_tokens")):
    g = torch.Generator().manual_seed(0)
    shapes = {"pose": (batch, 3, 8, 8), "src_tokens": (batch, 5, 6), "fusion": (batch, 7)}
    return {k: torch.rand(shapes[k], generator=g) + 0.1 for k in keys}


def test_module_gaussian_velocity_matches_the_test_oracle():
    x, t = torch.randn(50, 1, dtype=torch.float64), torch.linspace(0, 1000, 50, dtype=torch.float64)
    for sigma_min in (0.0, 0.1):
        torch.testing.assert_close(F.gaussian_velocity(MU, S, sigma_min)(x, t),
                                   GaussianVelocity(sigma_min=sigma_min)(x, t))


def test_command_line_tables_agree_with_counting(capsys):
    for label, predicted, counted, calls in F.nfe_table(steps=4):
        assert predicted == counted
    F.main(["--steps", "3"])
    assert "| euler 3 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        F.main(["--steps", "0"])


# ----------------------------------------------------------------------------- the path

@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_path_endpoints_and_velocity(sigma_min):
    fm = FlowMatching(sigma_min=sigma_min)
    x0, x1 = torch.randn(3, 4, 2, 2, dtype=torch.float64), torch.randn(3, 4, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(fm.interpolate(x0, x1, torch.zeros(3, dtype=torch.float64)), x0)
    torch.testing.assert_close(fm.interpolate(x0, x1, torch.ones(3, dtype=torch.float64)), x1 + sigma_min * x0)
    t, h = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64), 1e-6  # d x_t / dt by central difference
    slope = (fm.interpolate(x0, x1, t + h) - fm.interpolate(x0, x1, t - h)) / (2 * h)
    torch.testing.assert_close(slope, fm.target(x0, x1))


# ----------------------------------------------------------------------------- solvers on the exact field

@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_euler_many_steps_transports_noise_to_the_gaussian(sigma_min):
    x0, exact = noise_and_exact(sigma_min=sigma_min)
    x = FlowMatching(sigma_min=sigma_min).sample(GaussianVelocity(sigma_min=sigma_min), x0, {}, steps=200)
    assert x.mean().item() == pytest.approx(MU, abs=0.03)
    assert x.std().item() == pytest.approx(math.sqrt(S ** 2 + sigma_min ** 2), abs=0.01)
    assert (x - exact).abs().max().item() < 0.03


@pytest.mark.parametrize("solver", ["heun", "midpoint"])
def test_second_order_solvers_need_few_steps(solver):
    x0, exact = noise_and_exact()
    x = FlowMatching().sample(GaussianVelocity(), x0, {}, steps=8, solver=solver)
    assert x.mean().item() == pytest.approx(MU, abs=0.03)
    assert x.std().item() == pytest.approx(S, abs=0.01)
    assert (x - exact).abs().max().item() < 0.02


@pytest.mark.parametrize("solver", ["heun", "midpoint"])
def test_second_order_beats_euler_at_equal_nfe(solver):
    x0, exact = noise_and_exact(n=2000)
    fm = FlowMatching()
    for steps in (2, 4, 8):  # k second-order steps cost as much as 2k Euler steps
        err2 = (fm.sample(GaussianVelocity(), x0, {}, steps=steps, solver=solver) - exact).abs().max()
        err1 = (fm.sample(GaussianVelocity(), x0, {}, steps=2 * steps, solver="euler") - exact).abs().max()
        assert err2 < 0.5 * err1


def test_euler_error_shrinks_like_one_over_steps():
    x0, exact = noise_and_exact(n=2000)
    errors = [(FlowMatching().sample(GaussianVelocity(), x0, {}, steps=n) - exact).abs().max().item()
              for n in (25, 50, 100)]
    assert errors[0] / errors[1] == pytest.approx(2.0, rel=0.15)  # first order: halving dt halves the error
    assert errors[1] / errors[2] == pytest.approx(2.0, rel=0.15)


# ----------------------------------------------------------------------------- time shift and time sampling

def test_time_shift_identity_and_sd3_formula():
    steps = 8
    torch.testing.assert_close(FlowMatching(time_shift=1.0).time_grid(steps),
                               torch.linspace(0, 1, steps + 1, dtype=torch.float64))
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    for s in (0.5, 3.0):
        sigma = 1 - t  # SD3's axis: sigma = 1 is noise
        sd3 = 1 - s * sigma / (1 + (s - 1) * sigma)
        torch.testing.assert_close(shift_time(t, s), sd3)
    grid = FlowMatching(time_shift=3.0).time_grid(steps)
    assert grid[0] == 0 and grid[-1] == 1 and (grid.diff() > 0).all()
    assert (grid[1:-1] < torch.linspace(0, 1, steps + 1, dtype=torch.float64)[1:-1]).all()  # more time near noise


def test_time_sampling_distributions():
    g = torch.Generator().manual_seed(0)
    uniform = FlowMatching(time_sampling="uniform").sample_time(50_000, "cpu", g)
    assert uniform.min() >= 0 and uniform.max() <= 1
    assert uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    assert uniform.var().item() == pytest.approx(1 / 12, abs=0.003)
    t = FlowMatching(logit_mean=0.3, logit_std=0.8).sample_time(50_000, "cpu", g)
    logit = torch.log(t / (1 - t))
    assert logit.mean().item() == pytest.approx(0.3, abs=0.02)
    assert logit.std().item() == pytest.approx(0.8, abs=0.02)


# ----------------------------------------------------------------------------- loss

@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
@pytest.mark.parametrize("time_sampling", ["uniform", "logit_normal"])
def test_loss_zero_for_oracle_positive_otherwise(sigma_min, time_sampling):
    fm = FlowMatching(sigma_min=sigma_min, time_sampling=time_sampling)
    g = torch.Generator().manual_seed(0)
    point = torch.randn(1, 4, 6, 6, generator=g, dtype=torch.float64).expand(8, -1, -1, -1)
    loss, per_sample, t = fm.loss(PointVelocity(point, sigma_min), point, make_cond(8), generator=g)
    assert per_sample.shape == (8,) and t.shape == (8,) and ((t > 0) & (t < 1)).all()
    assert loss.item() < 1e-6
    zero_loss, zero_per_sample, _ = fm.loss(lambda x, t, **c: torch.zeros_like(x), point, {}, generator=g)
    assert zero_loss.item() > 0.5 and (zero_per_sample > 0).all()


def test_loss_gradients_flow_to_the_model():
    layer = torch.nn.Conv2d(4, 4, 1)
    loss, _, _ = FlowMatching().loss(lambda x, t, **c: layer(x), torch.randn(2, 4, 4, 4), make_cond())
    loss.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- guidance on velocities, NFE

def test_guided_velocity_with_conditions_is_exact():
    """Guidance of identical branches changes nothing: the oracle ignores its conditions."""
    x0, exact = noise_and_exact(n=500)
    cond = {"pose": torch.rand(500, 3, 4, 4)}
    x = FlowMatching().sample(GaussianVelocity(), x0, cond, steps=8, solver="midpoint", w_src=3.0)
    assert (x - exact).abs().max().item() < 0.02


@pytest.mark.parametrize("solver", ["euler", "midpoint", "heun"])
@pytest.mark.parametrize("keys,w_src,w_fus", [
    (("pose", "src_tokens"), 2.0, 2.0),
    (("pose", "src_tokens"), 1.0, 3.0),
    (("pose", "src_tokens", "fusion"), 2.0, 3.0),
    ((), 5.0, 5.0),
])
def test_nfe_matches_counted_evaluations(solver, keys, w_src, w_fus):
    model, batch, steps = CountingModel(), 3, 5
    FlowMatching().sample(model, torch.randn(batch, 4, 2, 2), make_cond(batch, keys), steps=steps,
                          solver=solver, w_src=w_src, w_fus=w_fus)
    assert model.calls == steps * F.EVALS_PER_STEP[solver]  # one batched forward per velocity evaluation
    assert model.rows // batch == nfe(steps, solver, keys, w_src, w_fus)


def test_default_nfe():
    assert (F.DEFAULT_STEPS, F.DEFAULT_SOLVER) == (10, "euler")
    assert nfe(F.DEFAULT_STEPS, F.DEFAULT_SOLVER, F.RPFM_COND_KEYS, **F.DEFAULT_GUIDANCE) == 20
    assert nfe(F.DEFAULT_STEPS, "heun", F.RPFM_COND_KEYS, **F.DEFAULT_GUIDANCE) == 40
    assert nfe(F.DEFAULT_STEPS, "euler", F.RPFM_COND_KEYS, 1.0, 1.0) == 10


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_return_trajectory_lengths(solver):
    noise = torch.randn(2, 4, 3, 3)
    x, traj = FlowMatching().sample(CountingModel(), noise, make_cond(2), steps=6, solver=solver,
                                    w_src=2.0, return_trajectory=True)
    assert len(traj) == 7 and traj[0] is noise
    torch.testing.assert_close(traj[-1], x)


def test_invalid_arguments_raise_value_error():
    with pytest.raises(ValueError, match="time_sampling"):
        FlowMatching(time_sampling="beta")
    with pytest.raises(ValueError, match="sigma_min"):
        FlowMatching(sigma_min=1.0)
    with pytest.raises(ValueError, match="time_shift"):
        FlowMatching(time_shift=0.0)
    with pytest.raises(ValueError, match="solver"):
        FlowMatching().sample(CountingModel(), torch.randn(1, 4, 2, 2), {}, steps=2, solver="rk4")
    with pytest.raises(ValueError, match="steps"):
        FlowMatching().time_grid(0)
    with pytest.raises(ValueError, match="unknown key"):
        FlowMatching().sample(CountingModel(), torch.randn(1, 4, 2, 2), {"text": torch.ones(1, 2)}, steps=1)


@pytest.mark.parametrize("sigma_min", [0.0, 0.1])
def test_predict_x1_and_denoise_once_with_the_path_velocity_return_the_data(sigma_min):
    """The velocity of the straight line points at its data end: x1 is read back from any (x_t, t)."""
    fm = FlowMatching(sigma_min=sigma_min)
    x1 = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 0.4, 1.0])
    x_t = fm.interpolate(noise, x1, t)
    assert torch.allclose(fm.predict_x1(fm.target(noise, x1), x_t, t), x1, atol=1e-6)
    oracle = lambda x, t, **cond: fm.target(noise, x1)  # noqa: E731 (constant along the line)
    for level in (0.0, 0.5, 1.0):
        assert torch.allclose(fm.denoise_once(oracle, x1, noise, level, None), x1, atol=1e-6)


class LinearInX(torch.nn.Module):
    """v(x, t) = a(t) x + b(t), a and b cubic in t: close to the family of the exact straight-line field of
    a linear coupling z -> mu + s z, which is a(t) = (s - 1) / (1 + (s - 1) t), b(t) = mu / (1 + (s - 1) t)."""

    def __init__(self, degree: int = 3):
        super().__init__()
        self.coef = torch.nn.Parameter(torch.zeros(2, degree + 1))  # rows: a, b

    def forward(self, x, t, **cond):
        powers = (t / 1000.0).view(-1, 1) ** torch.arange(self.coef.shape[1])  # (B, degree + 1)
        a, b = (powers @ self.coef.T).unbind(-1)  # (B,) each
        return a.view(-1, 1) * x + b.view(-1, 1)


def test_reflow_student_on_gaussian_couplings_transports_in_one_step():
    """The teacher is the exact field of N(2, 0.5^2); its ODE sends z to 2 + 0.5 z. Its couplings, and a
    student trained on them with Reflow.loss, make ONE Euler step land on that map, which the teacher's
    own field misses by far (its paths bend: at t = 0 it points at the mean, 2)."""
    torch.manual_seed(0)
    teacher = GaussianVelocity()
    z = torch.randn(4096, 1)
    x1_hat = F.couplings(FlowMatching(), teacher, z, None, steps=16, solver="heun", w_src=1.0, w_fus=1.0)
    assert (x1_hat - (MU + S * z)).abs().max() < 1e-2  # accurate couplings (Heun 16: 3e-3)
    student, reflow = LinearInX(), F.Reflow()
    opt = torch.optim.Adam(student.parameters(), lr=0.1)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 1000)  # to convergence: no step noise left
    for _ in range(1000):
        idx = torch.randint(0, len(z), (512,))
        loss = reflow.loss(student, x1_hat[idx], None, noise=z[idx])[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    z_test = torch.randn(1000, 1)
    exact = MU + S * z_test
    assert reflow.release == dict(steps=2, sampler="euler", w_src=1.0, w_fus=1.0)
    one_step = reflow.sample(student, z_test, None, steps=1)
    assert (one_step - exact).abs().max() < 0.05
    assert (FlowMatching().sample(teacher, z_test, None, steps=1) - exact).abs().max() > 0.5
    with pytest.raises(ValueError, match="pass noise=z"):
        reflow.loss(student, x1_hat[:4], None)
