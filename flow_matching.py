"""RPFM's generative process: conditional flow matching on the optimal-transport path, ODE samplers.

Concept. Draw noise x0 ~ N(0, I) and a data latent x1, and join them by a straight line in time
t in [0, 1] (t = 0 noise, t = 1 data, the convention of Lipman et al. and of RPFM):

    x_t = (1 - (1 - sigma_min) t) x0 + t x1,        u = d x_t / dt = x1 - (1 - sigma_min) x0.

The network v(x_t, t) is regressed on u (mean squared error). The average of u over every pair
passing through x_t is a velocity field whose ODE dx/dt = v carries N(0, I) to the data, so
sampling is a deterministic ODE solve in a few steps (Euler, midpoint or Heun): no noise is
injected along the way, which is what makes it fast. sigma_min = 0 gives rectified flow.
Guidance is the same cumulative classifier-free guidance as diffusion.py, applied to velocities.

Time sampling at training: uniform, or logit-normal (t = sigmoid(m + s n), SD3) which puts more
training on the middle of the path. Time shift at sampling (SD3's resolution shift, s = time_shift):
SD3 writes it for sigma = 1 - t (its sigma = 1 is noise) as sigma' = s sigma / (1 + (s - 1) sigma);
in our t = 0-noise convention that is

    t' = t / (s - (s - 1) t),

so s = 1 is the identity and s > 1 spends more of the steps near the noise end.

This file holds no network code: it drives any callable `model(x_t, t, **cond)`, t a float (B,)
in [0, 1000] (flow time x 1000).

Papers: flow matching, Lipman et al. 2022 (arXiv 2210.02747); rectified flow, Liu et al. 2022
(arXiv 2209.03003); SD3 (logit-normal time, shift), Esser et al. 2024 (arXiv 2403.03206);
Heun's method in EDM, Karras et al. 2022 (arXiv 2206.00364); RPFM, Jeong et al. 2025
(arXiv 2505.03562).

Run: python flow_matching.py [--steps 10]   (NFE table checked by counting calls, and each solver's
     error on a Gaussian target whose exact velocity field is known)
Tests: python -m pytest -q tests/test_flow_matching.py

Shape letters: B batch, C latent channels, h w latent height/width, N sampling steps.
"""
from __future__ import annotations

import torch

from guidance import (INDEPENDENT_DROP, RowCounter, at_least_float32, drop_conditions, gaussian_like, guidance_branches,
                      guided_output, nfe_cli, progress_bar)

# Our choice, not a figure from the RPFM paper (whose step count we could not find): 10 Euler steps,
# i.e. 20 network evaluations per image with two guidance branches, half of FPDM's 20 x 2.
DEFAULT_STEPS = 10
DEFAULT_SOLVER = "euler"
DEFAULT_GUIDANCE = {"w_src": 2.0, "w_fus": 2.0}  # the same scale as FPDM's, so only the process differs
RPFM_COND_KEYS = ("pose", "src_tokens")  # RPFM has no fusion embedding: two guidance branches
SOLVERS = ("euler", "midpoint", "heun")
EVALS_PER_STEP = {"euler": 1, "midpoint": 2, "heun": 2}
TIME_SAMPLINGS = ("uniform", "logit_normal")


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's time shift in the t = 0-noise convention: t' = t / (s - (s - 1) t); s = 1 is the identity."""
    return t / (shift - (shift - 1.0) * t)


def nfe(steps: int, solver: str = DEFAULT_SOLVER, cond_keys=RPFM_COND_KEYS,
        w_src: float = 1.0, w_fus: float = 1.0) -> int:
    """Network evaluations per image of `FlowMatching.sample`: steps x evals per step x guidance branches.

    Euler evaluates the velocity once per step, midpoint and Heun twice; each evaluation is one
    batched call holding (branches x B) rows.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver {solver!r}: expected one of {SOLVERS}")
    return int(steps) * EVALS_PER_STEP[solver] * len(guidance_branches(cond_keys, w_src, w_fus))


class FlowMatching:
    """Conditional flow matching: `interpolate`, `target`, `loss`, `time_grid`, `sample`.

    Names: the papers call the noise x0 and the data x1. Here the noise is `noise` and the clean
    latent is `x1`, because diffusion.py's `x0` is clean data: no name means two things.
    joint_drop: probability of dropping every condition of a sample at once (guidance.py says why).
    `release`: how RPFM samples unless told otherwise (sample.py, train.py's grids, the sweep).
    """
    samplers = SOLVERS
    release = dict(steps=DEFAULT_STEPS, sampler=DEFAULT_SOLVER, **DEFAULT_GUIDANCE)

    def __init__(self, sigma_min: float = 0.0, time_sampling: str = "logit_normal", drop_probs: dict | None = None,
                 joint_drop: float = 0.0, time_shift: float = 1.0, logit_mean: float = 0.0, logit_std: float = 1.0):
        if time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling {time_sampling!r}: expected one of {TIME_SAMPLINGS}")
        if not 0.0 <= sigma_min < 1.0:
            raise ValueError(f"sigma_min {sigma_min}: expected 0 <= sigma_min < 1")
        if time_shift <= 0:
            raise ValueError(f"time_shift {time_shift}: expected a positive number")
        self.sigma_min, self.time_sampling = float(sigma_min), time_sampling
        # RPFM's drop rates are not published where we could read them: FPDM's 0.2 per condition
        self.drop_probs = dict(INDEPENDENT_DROP if drop_probs is None else drop_probs)
        self.joint_drop = float(joint_drop)
        self.time_shift = float(time_shift)
        self.logit_mean, self.logit_std = float(logit_mean), float(logit_std)

    def interpolate(self, noise: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - (1 - sigma_min) t) noise + t x1 for t (B,)."""
        t = t.view(-1, *([1] * (x1.dim() - 1)))  # (B, 1, ..., 1): broadcast over any rank
        return (1.0 - (1.0 - self.sigma_min) * t) * noise + t * x1

    def target(self, noise: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """u = x1 - (1 - sigma_min) noise: the path's velocity, constant in t (a straight line)."""
        return x1 - (1.0 - self.sigma_min) * noise

    def predict_x1(self, velocity: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The data end of the straight line through x_t with this velocity: x1 = (1 - sigma_min) x_t + a v.

        From x_t = a noise + t x1 and v = x1 - (1 - sigma_min) noise, with a = 1 - (1 - sigma_min) t:
        (1 - sigma_min) x_t + a v = t (1 - sigma_min) x1 + a x1 = x1. With sigma_min = 0: x_t + (1 - t) v.
        """
        t = t.view(-1, *([1] * (x_t.dim() - 1)))  # (B, 1, ..., 1)
        a = 1.0 - (1.0 - self.sigma_min) * t
        return (1.0 - self.sigma_min) * at_least_float32(x_t) + a * at_least_float32(velocity)

    @torch.no_grad()
    def denoise_once(self, model, x1: torch.Tensor, noise: torch.Tensor, level: float, cond: dict | None,
                     w_src: float = 1.0, w_fus: float = 1.0) -> torch.Tensor:
        """Move clean latents `level` of the way to noise (0 clean, 1 pure noise: t = 1 - level) and
        predict x1 in ONE model call: the same diagnostic as diffusion.Diffusion.denoise_once."""
        t = torch.full((x1.shape[0],), 1.0 - float(level), device=x1.device)  # (B,) flow time
        x_t = self.interpolate(noise, at_least_float32(x1), t)
        return self.predict_x1(guided_output(model, x_t, t * 1000.0, cond, w_src, w_fus), x_t, t)

    def sample_time(self, batch: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training times (B,) in (0, 1), float32: uniform, or sigmoid of N(logit_mean, logit_std^2)."""
        gen_device = generator.device if generator is not None else device
        if self.time_sampling == "uniform":
            return torch.rand(batch, generator=generator, device=gen_device).to(device)
        n = torch.randn(batch, generator=generator, device=gen_device).to(device)
        return torch.sigmoid(self.logit_mean + self.logit_std * n)

    def loss(self, model, x1: torch.Tensor, cond: dict | None, generator: torch.Generator | None = None,
             noise: torch.Tensor | None = None):
        """Flow-matching objective. Returns (mean loss, per-sample loss (B,), t (B,), 0 = noise, 1 = data).

        noise: the other end of each line; None draws it independently of x1 (flow matching's
        coupling). Reflow passes the z that the teacher turned into x1 (see `Reflow`).
        note: times, the path and the target are float32 whatever dtype x1 arrives in: a bf16 t
        (CUDA autocast) has 8 bits of mantissa, so neighbouring times would collapse into one.
        """
        x1 = at_least_float32(x1)
        t = self.sample_time(x1.shape[0], x1.device, generator)  # (B,) float32
        noise = gaussian_like(x1, generator) if noise is None else at_least_float32(noise)
        x_t = self.interpolate(noise, x1, t)
        pred = model(x_t, t * 1000.0, **drop_conditions(cond, self.drop_probs, generator, self.joint_drop))
        per_sample = (at_least_float32(pred) - self.target(noise, x1)).pow(2).flatten(1).mean(dim=1)  # (B,)
        return per_sample.mean(), per_sample, t

    def time_grid(self, steps: int, device=None) -> torch.Tensor:
        """The N + 1 solver times from 0 (noise) to 1 (data), shifted by `time_shift`."""
        if int(steps) < 1:
            raise ValueError(f"steps {steps}: expected at least 1")
        grid = torch.linspace(0.0, 1.0, int(steps) + 1, dtype=torch.float64, device=device)  # (N + 1,)
        return shift_time(grid, self.time_shift)

    @staticmethod
    def solver_step(velocity, x: torch.Tensor, t0: float, t1: float, solver: str) -> torch.Tensor:
        """One ODE step from t0 to t1 with `velocity(x, t)`.

        euler: slope at the start. midpoint: slope at a half step. heun: the average of the slope at
        the start and at an Euler guess of the end (trapezoid rule). The last two are second order.
        note: Heun's last step takes its second slope at t = 1, where logit-normal training puts
        almost no samples (P(t > 0.99) is 2e-6). We keep it anyway, measured: an Euler last step (EDM's
        choice, which ends at sigma = 0 where its network is undefined; ours is defined at t = 1)
        makes Heun first order again: on the exact Gaussian field 8 Heun steps then miss by 0.064
        instead of < 0.02 (tests/test_flow_matching.py), losing what the extra evaluations buy.
        """
        dt = t1 - t0
        v0 = velocity(x, t0)
        if solver == "euler":
            return x + dt * v0
        if solver == "midpoint":
            return x + dt * velocity(x + 0.5 * dt * v0, t0 + 0.5 * dt)
        return x + 0.5 * dt * (v0 + velocity(x + dt * v0, t1))

    @torch.no_grad()
    def sample(self, model, noise: torch.Tensor, cond: dict | None, steps: int = DEFAULT_STEPS,
               solver: str = DEFAULT_SOLVER, w_src: float = 1.0, w_fus: float = 1.0,
               return_trajectory: bool = False, progress: bool = False):
        """Integrate dx/dt = v from noise (t = 0) to data (t = 1). Returns x1, or (x1, N + 1 states).

        Velocities are guided exactly like diffusion.py's noise predictions; `nfe()` gives the
        network evaluations per image. The state is float32 whatever dtype `noise` has.
        """
        if solver not in SOLVERS:
            raise ValueError(f"solver {solver!r}: expected one of {SOLVERS}")
        grid = self.time_grid(steps).tolist()

        def velocity(x: torch.Tensor, t: float) -> torch.Tensor:
            t_in = torch.full((x.shape[0],), t * 1000.0, device=x.device)  # (B,) float time for the network
            return guided_output(model, x, t_in, cond, w_src, w_fus).to(x.dtype)

        x, trajectory = at_least_float32(noise), [noise]
        for i in progress_bar(range(len(grid) - 1), progress, f"{solver} {steps} steps"):
            x = self.solver_step(velocity, x, grid[i], grid[i + 1], solver)
            if return_trajectory:
                trajectory.append(x)
        return (x, trajectory) if return_trajectory else x


# ----------------------------------------------------------------------------- reflow: a one- or two-step student

# The teacher's ODE is solved with Heun (second order) in TEACHER_STEPS steps: 16 evaluations a pair,
# x 2 guidance branches. Measured against Heun 64 on 128 pairs of the main job's teacher: decoded
# images differ by 0.0015 on average (0-1 scale; SSIM 0.9998), where Euler 10 differs by 0.0097;
# Heun 16 halves the latent error (0.0168 -> 0.0076) but the images' only from 0.0015 to 0.0011, for twice
# the cost (RESULTS.md, "reflow").
TEACHER_STEPS, TEACHER_SOLVER = 8, "heun"
REFLOW_STEPS = 2  # the student's release setting: 2 Euler steps, one branch each, so NFE 2


@torch.no_grad()
def couplings(teacher_process: FlowMatching, teacher, noise: torch.Tensor, cond: dict | None,
              steps: int = TEACHER_STEPS, solver: str = TEACHER_SOLVER, w_src: float = DEFAULT_GUIDANCE["w_src"],
              w_fus: float = DEFAULT_GUIDANCE["w_fus"]) -> torch.Tensor:
    """x1_hat (B, C, h, w) for each noise z (B, C, h, w): the teacher's GUIDED ODE, solved accurately.

    Nothing here is new: it is the teacher's sampler at a careful setting. What is new is keeping
    (z, x1_hat) together: a deterministic coupling, the training pairs of `Reflow`.
    """
    return teacher_process.sample(teacher, noise, cond, steps, solver, w_src, w_fus)


class Reflow(FlowMatching):
    """Reflow (rectified flow, Liu et al. 2022), with guidance distilled into the student (InstaFlow).

    Why a flow-matching model needs many steps. Training joins noise and data INDEPENDENTLY, so many
    straight lines pass through each x_t, pointing at different images; the network learns their
    average direction. The ODE of that average field bends (towards the mean early, towards one image
    late), and Euler walks straight: with few steps it cuts the bends and lands between images, a
    blur (the sweep in RESULTS.md shows where).

    What reflow changes: the coupling. Solve the teacher's ODE from noise z to its own answer x1_hat
    (`couplings`), and regress on the straight lines z -> x1_hat instead. ODE paths never cross, so
    these lines cross far less than independent ones: at each x_t they mostly agree, the learnt field
    is nearly constant along each line, and a constant velocity is integrated EXACTLY by one Euler
    step, x1 = z + v(z, 0). Two steps correct what bending is left.

    Guidance baked in: the teacher's ODE is solved with guidance (w = 2, two branches a step), the
    student is trained with every condition kept, so it draws the guided answer in one branch: w = 1,
    NFE = steps. The loss is FlowMatching's with the coupling's z as the noise, no condition dropping
    and uniform t (a 1- or 2-step sampler asks at t = 0 and 0.5, which logit-normal t rarely trains).
    The student starts from the teacher's weights: it only has to straighten, not to learn to draw.
    """
    release = dict(steps=REFLOW_STEPS, sampler="euler", w_src=1.0, w_fus=1.0)

    def __init__(self, time_sampling: str = "uniform"):
        super().__init__(sigma_min=0.0, time_sampling=time_sampling, drop_probs={}, joint_drop=0.0)

    def loss(self, model, x1: torch.Tensor, cond: dict | None, generator: torch.Generator | None = None,
             noise: torch.Tensor | None = None):
        """The straight-line regression between each coupled (noise, x1): see the class docstring."""
        if noise is None:
            raise ValueError("Reflow.loss trains on couplings: pass noise=z, the noise the teacher turned into x1")
        return super().loss(model, x1, cond, generator, noise=noise)


# ----------------------------------------------------------------------------- command line: NFE and solver error

def gaussian_velocity(mu: float, s: float, sigma_min: float = 0.0):
    """The exact marginal velocity field when the data is N(mu, s^2) per coordinate (t arrives x 1000).

    x_t = a x0 + t x1 with a = 1 - (1 - sigma_min) t is Gaussian, so E[u | x_t] is linear in x_t:
    mu + Cov(u, x_t) / Var(x_t) (x - t mu). Its flow sends x0 to mu + sqrt(s^2 + sigma_min^2) x0.
    """
    def velocity(x: torch.Tensor, t: torch.Tensor, **cond) -> torch.Tensor:
        t = (t.to(x.dtype) / 1000.0).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ...)
        a = 1.0 - (1.0 - sigma_min) * t
        return mu + (t * s ** 2 - (1.0 - sigma_min) * a) / (a ** 2 + t ** 2 * s ** 2) * (x - t * mu)
    return velocity


def solver_errors(budgets=(4, 8, 16), n: int = 10_000) -> list[tuple[str, int, int, float]]:
    """(solver, steps, NFE, max |x - exact|) on N(2, 0.5^2) at equal network-evaluation budgets."""
    x0 = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact, rows = 2.0 + 0.5 * x0, []
    for budget in budgets:
        for solver in SOLVERS:
            steps = budget // EVALS_PER_STEP[solver]
            x = FlowMatching().sample(gaussian_velocity(2.0, 0.5), x0, {}, steps=steps, solver=solver)
            rows.append((solver, steps, budget, (x - exact).abs().max().item()))
    return rows


def nfe_table(steps: int = DEFAULT_STEPS, batch: int = 2) -> list[tuple[str, int, int, int]]:
    """(setting, nfe() per image, counted evaluations per image, forward calls) for RPFM's conditions."""
    cond, rows = {key: torch.zeros(batch, 1) for key in RPFM_COND_KEYS}, []  # the counter ignores values
    for solver in SOLVERS:
        counter = RowCounter()
        FlowMatching().sample(counter, torch.zeros(batch, 4, 2, 2), cond, steps, solver, **DEFAULT_GUIDANCE)
        label = f"{solver} {steps} steps, w_src={DEFAULT_GUIDANCE['w_src']:g} (no fusion)"
        rows.append((label, nfe(steps, solver, RPFM_COND_KEYS, **DEFAULT_GUIDANCE), counter.rows // batch,
                     counter.calls))
    return rows


def main(argv=None) -> None:
    nfe_cli(nfe_table, DEFAULT_STEPS, "NFE per image of the flow-matching solvers (RPFM conditions)", argv)
    print("\n| solver | steps | NFE | max abs error vs exact map, N(2, 0.5^2) |\n| --- | --- | --- | --- |")
    for solver, steps, budget, error in solver_errors():
        print(f"| {solver} | {steps} | {budget} | {error:.1e} |")


if __name__ == "__main__":
    main()
