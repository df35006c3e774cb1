"""FPDM's generative process: DDPM training, DDIM / DDPM sampling, cumulative classifier-free guidance.

Concept. A diffusion model learns to undo a fixed noising chain. With alpha_bar(t) the cumulative
product of (1 - beta), a noisy latent at integer step t (0 = least noisy, T - 1 = almost pure noise) is

    x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps,      eps ~ N(0, I)

and the network is trained to predict eps (or v = sqrt(a) eps - sqrt(1 - a) x0). Sampling walks
back over a few of the T steps: DDIM (eta = 0, deterministic) or DDPM ancestral (fresh noise each
step, identical to DDIM with eta = 1). Conditions (pose, source tokens, fusion embedding) are
dropped at random during training so that one network also knows the unconditional and the
"pose + source only" answers; sampling mixes them (cumulative classifier-free guidance, the
formula and its cost are in guidance.py, shared with flow_matching.py):

    out = u + w_src * (c_src - u) + w_fus * (c_full - c_src)

FPDM's sampler and steps are the defaults (below), but the guidance weights of `sample()` default to
1 (unguided, one branch): FPDM's release passes w_src = w_fus = 2.0, as `Diffusion.release` records and
pipeline.sampling_for applies (sample.py, the sweep, train.py's grids). The release samples with
DDPM ancestral steps (each equal to diffusers' DDPMScheduler.step, tested), 20 of them on SD's
"leading" spacing with steps_offset 1 (t = 951, 901, ..., 1), and one guidance weight 2.0 (two
branches: NFE = 40 per image). Also available, by argument or by flag in sample.py:
  - sampler="ddim" (eta = 0: deterministic, the usual choice at 50 steps, e.g. CFLD's sampler);
  - spacing="trailing" (999, 949, ..., 49): starts at the noisiest trained step, which "leading"
    never visits (Lin et al. 2023); better in theory, not what FPDM ran;
  - w_src != w_fus: three branches (u, c_src, c_full), 1.5x the cost of plain CFG.

Numerics: the schedule, q_sample, the targets and every sampler update are computed in float32
whatever dtype the latents arrive in. In bf16 (what a CUDA autocast VAE returns) alpha_bar rounds so
that t = 0 and t = 1 add no noise at all and only ~28 distinct noise levels remain below t = 100:
the network would be told one t and trained on another.

Why the tiny CPU preset predicts v, not FPDM's eps (train.py --prediction; GPU presets keep eps).
With eps-prediction the network's x0 is (x_t - sqrt(1 - a) eps_hat) / sqrt(a): an eps error is
amplified by sqrt(1 - a) / sqrt(a), which is 14.6 at t = 999, 11.0 at step 951 where the 20-step
sampler starts, and above 2 for 8 of its 20 steps. Measured at the main job's budget (`python
evaluate.py --one-step CKPT`, 822 test pairs): the eps UNet predicts x0 as well as the v UNet at low
noise (SSIM 0.73 at step 50, both), but from the sampler's first input (pure noise at step 951) its
x0 misses by 1.45 RMS on unit-variance latents, worse than predicting zeros (1.09), where the v UNet
misses by 0.52. Every later step starts from that wrong guess: its samples score SSIM 0.258, barely
above copying the source (0.234), where v scores 0.352 and draws a person. v = sqrt(a) eps -
sqrt(1 - a) x0 reads x0 = sqrt(a) x_t - sqrt(1 - a) v: no amplification. The fusion input, the EMA
weights and the sampler were ruled out the same way (RESULTS.md, "Why FPDM drew noise"). On the GPU
presets (SD's UNet, 100k+ steps) eps works, as FPDM shows, so they keep the paper's objective.

This file holds no network code: it drives any callable `model(x_t, t, **cond)` whose `t` is a
float tensor (B,) in [0, 1000] (here: the integer step as a float).

Papers: DDPM, Ho et al. 2020 (arXiv 2006.11239); DDIM, Song et al. 2020 (arXiv 2010.02502);
v-prediction, Salimans & Ho 2022 (arXiv 2202.00512); classifier-free guidance, Ho & Salimans 2022
(arXiv 2207.12598); trailing timesteps, Lin et al. 2023 (arXiv 2305.08891); offset noise
(Guttenberg 2023, crosslabs.org blog); FPDM, Lee et al. 2024 (arXiv 2412.07333).

Facts taken from FPDM's public release (github.com/dhlee-work/FPDM, config
c1.fpdm-clip-deepfashion.yaml and C1.test_Diffusion_model.py): Stable Diffusion 2.1 schedule
(scaled_linear 0.00085 -> 0.012, T = 1000, eps-prediction), noise_offset 0.1, drop rate 0.2 for each
of pose, source image and fusion modules, sampling with num_inference_steps 20 and one
guidance_scale 2.0 (its pipeline's signature default of 50 steps is Stable Diffusion's, unused).

Run: python diffusion.py [--steps 20]   (prints the NFE table, each figure checked by counting calls)
Tests: python -m pytest -q tests/test_diffusion.py

Shape letters: B batch, C latent channels, h w latent height/width, k guidance branches, T train steps.
"""
from __future__ import annotations

import torch

from guidance import (COND_KEYS, INDEPENDENT_DROP, RowCounter, at_least_float32, drop_conditions, gaussian_like,
                      guidance_branches, guided_output, nfe_cli, progress_bar)

# FPDM's release (C1.test_Diffusion_model.py): DDPM ancestral sampling, 20 steps, one guidance
# scale 2.0 for both terms, on Stable Diffusion's scheduler config ("leading" spacing, steps_offset 1).
DEFAULT_STEPS = 20
DEFAULT_SAMPLER = "ddpm"
DEFAULT_GUIDANCE = {"w_src": 2.0, "w_fus": 2.0}  # FPDM's guidance_scale 2.0: w_src == w_fus, 2 branches
DEFAULT_SPACING, DEFAULT_STEPS_OFFSET = "leading", 1  # SD 2.1's scheduler_config.json: 951, 901, ..., 1
FPDM_DROP_PROBS = INDEPENDENT_DROP  # FPDM: 0.2 per module (pose, source image, fusion)
SCHEDULES = ("linear", "scaled_linear")
PREDICTIONS = ("eps", "v")
SAMPLERS = ("ddim", "ddpm")
SPACINGS = ("trailing", "leading")


def nfe(steps: int, sampler: str = DEFAULT_SAMPLER, cond_keys=COND_KEYS,
        w_src: float = 1.0, w_fus: float = 1.0) -> int:
    """Network evaluations per image of `Diffusion.sample`: steps x guidance branches.

    One batched forward call per step; the batch holds (branches x B) rows, so per image the
    network runs steps x branches times. Both samplers evaluate the model once per step.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r}: expected one of {SAMPLERS}")
    return int(steps) * len(guidance_branches(cond_keys, w_src, w_fus))


# ----------------------------------------------------------------------------- the process

def make_betas(schedule: str, num_train_steps: int) -> torch.Tensor:
    """Noise schedule beta_t (T,) in float64: DDPM's linear, or Stable Diffusion's linear-in-sqrt."""
    if schedule == "linear":  # DDPM, Ho et al.: 1e-4 -> 0.02
        return torch.linspace(1e-4, 0.02, num_train_steps, dtype=torch.float64)
    if schedule == "scaled_linear":  # Stable Diffusion (and FPDM, which fine-tunes SD 2.1)
        return torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, num_train_steps, dtype=torch.float64) ** 2
    raise ValueError(f"schedule {schedule!r}: expected one of {SCHEDULES}")


class Diffusion:
    """DDPM with T steps: `q_sample`, `loss`, `ddim_step`, `ddpm_step`, `sample`.

    spacing: which T-step indices a `steps`-step sampler visits (diffusers' names), plus steps_offset:
      "leading" (default, with steps_offset 1 as in SD's and FPDM's configs): (S - 1) T/S + 1, ...,
        T/S + 1, 1, i.e. 951, 901, ..., 1 for 20 steps.
      "trailing": 999, 999 - T/S, ..., T/S - 1. Sampling starts from pure noise, and t = 999 is the
        step whose training inputs are closest to pure noise (Lin et al. 2023: "leading" never visits
        it, an input/noise-level mismatch). steps_offset does not apply.
    set_alpha_to_one: the "alpha_bar" used after the last step. True (diffusers' default, and what
      DDPMScheduler always does) makes the last step return its predicted x0; False uses
      alpha_bar_0, as DDIMScheduler does with SD's configs.
    joint_drop: probability of dropping every condition of a sample at once (guidance.py says why),
      on top of the independent `drop_probs`.
    `release`: how FPDM samples unless told otherwise (sample.py, train.py's grids, the sweep).
    """
    samplers = SAMPLERS
    release = dict(steps=DEFAULT_STEPS, sampler=DEFAULT_SAMPLER, **DEFAULT_GUIDANCE)

    def __init__(self, num_train_steps: int = 1000, schedule: str = "scaled_linear", prediction: str = "eps",
                 offset_noise: float = 0.0, drop_probs: dict | None = None, joint_drop: float = 0.0,
                 spacing: str = DEFAULT_SPACING, steps_offset: int = DEFAULT_STEPS_OFFSET,
                 set_alpha_to_one: bool = True):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction {prediction!r}: expected one of {PREDICTIONS}")
        if spacing not in SPACINGS:
            raise ValueError(f"spacing {spacing!r}: expected one of {SPACINGS}")
        if int(num_train_steps) < 2:
            raise ValueError(f"num_train_steps {num_train_steps}: expected at least 2")
        self.num_train_steps = int(num_train_steps)
        self.schedule, self.prediction, self.spacing = schedule, prediction, spacing
        self.steps_offset = int(steps_offset)
        self.offset_noise = float(offset_noise)
        self.drop_probs = dict(FPDM_DROP_PROBS if drop_probs is None else drop_probs)
        self.joint_drop = float(joint_drop)
        betas = make_betas(schedule, self.num_train_steps)  # (T,) float64 for an accurate product
        # note: stored in float32 like diffusers (float64 does not exist on every device, e.g. MPS)
        self.betas = betas.float()  # (T,)
        self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()  # (T,)
        self.final_alpha_cumprod = 1.0 if set_alpha_to_one else float(self.alphas_cumprod[0])
        self._tables = {}  # (device, dtype) -> the alpha_bar table there, built once (see `table`)

    def to(self, device) -> "Diffusion":
        """Move the schedule tensors (`table` also keeps one copy per device the latents live on)."""
        self.betas, self.alphas_cumprod = self.betas.to(device), self.alphas_cumprod.to(device)
        self._tables = {}
        return self

    def table(self, like: torch.Tensor) -> torch.Tensor:
        """(T + 1,) alpha_bar on like's device in at least float32, the last entry the value "after
        the last step"; copied to that device ONCE and kept, so no sampling step copies from the host.

        note: a step that moved the table to the GPU every call would pay a host-to-device copy
        (and its synchronisation) per step, FPDM's own bookkeeping slowing it beside RPFM.
        """
        key = (like.device, torch.promote_types(like.dtype, torch.float32))
        if key not in self._tables:
            table = self.alphas_cumprod.to(*key)  # (T,)
            self._tables[key] = torch.cat([table, table.new_tensor([self.final_alpha_cumprod])])  # (T + 1,)
        return self._tables[key]

    def _abar(self, t, like: torch.Tensor) -> torch.Tensor:
        """alpha_bar at step t (int or (B,); t < 0: "after the last step"), shaped to broadcast.

        note: float32 (float64 for float64 inputs), never bf16: see "Numerics" in the module docstring.
        """
        table = self.table(like)  # (T + 1,), on like's device
        if isinstance(t, int):  # the samplers' steps: a Python index into the device table, no copy
            return table[t if t >= 0 else -1]  # ()
        t = torch.as_tensor(t, device=like.device).long()  # () or (B,)
        a = table[torch.where(t >= 0, t, table.shape[0] - 1)]  # () or (B,)
        return a.view(-1, *([1] * (like.dim() - 1))) if a.dim() == 1 else a  # (B, 1, ..., 1)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(a_t) x0 + sqrt(1 - a_t) noise in float32, t (B,) integer steps."""
        a = self._abar(t, x0)
        return a.sqrt() * at_least_float32(x0) + (1.0 - a).sqrt() * at_least_float32(noise)

    def velocity(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The v-prediction target v = sqrt(a_t) noise - sqrt(1 - a_t) x0, in float32."""
        a = self._abar(t, x0)
        return a.sqrt() * at_least_float32(noise) - (1.0 - a).sqrt() * at_least_float32(x0)

    def predict_x0_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Read the network output (eps or v) as the pair (predicted x0, predicted eps), in float32."""
        a, out, x_t = self._abar(t, x_t), at_least_float32(model_output), at_least_float32(x_t)
        if self.prediction == "eps":
            return (x_t - (1.0 - a).sqrt() * out) / a.sqrt(), out
        x0 = a.sqrt() * x_t - (1.0 - a).sqrt() * out
        return x0, a.sqrt() * out + (1.0 - a).sqrt() * x_t

    def step_at(self, level: float) -> int:
        """The train step at `level` of the way from clean (0) to the noisiest trained input (1)."""
        return round(float(level) * (self.num_train_steps - 1))

    @torch.no_grad()
    def denoise_once(self, model, x0: torch.Tensor, noise: torch.Tensor, level: float, cond: dict | None,
                     w_src: float = 1.0, w_fus: float = 1.0) -> torch.Tensor:
        """Noise clean latents to `level` (0 clean, 1 the noisiest step) and predict x0 in ONE model call.

        A diagnostic (evaluate.py --one-step): how good the network is at each noise level, with no
        sampler in the way. flow_matching.FlowMatching.denoise_once answers the same question.
        """
        t = torch.full((x0.shape[0],), self.step_at(level), device=x0.device)  # (B,) integer step
        x_t = self.q_sample(x0, t, noise)
        out = guided_output(model, x_t, t.float(), cond, w_src, w_fus)
        return self.predict_x0_eps(out, x_t, t)[0]

    def loss(self, model, x0: torch.Tensor, cond: dict | None, generator: torch.Generator | None = None):
        """DDPM objective. Returns (mean loss, per-sample loss (B,), t / (T - 1) (B,), 0 = least noisy)."""
        x0, batch = at_least_float32(x0), x0.shape[0]  # float32 whatever arrives (module docstring, "Numerics")
        device = generator.device if generator is not None else x0.device
        t = torch.randint(0, self.num_train_steps, (batch,), generator=generator, device=device).to(x0.device)  # (B,)
        noise = gaussian_like(x0, generator)
        if self.offset_noise > 0 and x0.dim() > 2:
            # offset noise: a per-sample, per-channel constant lets the model learn to shift the
            # overall brightness, which zero-mean pixel noise almost never does (FPDM uses 0.1)
            shape = (batch, x0.shape[1]) + (1,) * (x0.dim() - 2)  # (B, C, 1, 1)
            noise = noise + self.offset_noise * gaussian_like(x0, generator, shape)
        x_t = self.q_sample(x0, t, noise)
        target = noise if self.prediction == "eps" else self.velocity(x0, noise, t)
        pred = model(x_t, t.float(), **drop_conditions(cond, self.drop_probs, generator, self.joint_drop))
        per_sample = (at_least_float32(pred) - target).pow(2).flatten(1).mean(dim=1)  # (B,)
        return per_sample.mean(), per_sample, t.float() / (self.num_train_steps - 1)

    def timesteps(self, steps: int) -> list[int]:
        """The descending train-step indices a `steps`-step sampler visits (see `spacing`)."""
        steps, total = int(steps), self.num_train_steps
        if not 1 <= steps <= total:
            raise ValueError(f"steps {steps}: expected 1 <= steps <= num_train_steps ({total})")
        if self.spacing == "trailing":
            return [round(total - i * total / steps) - 1 for i in range(steps)]
        if (steps - 1) * (total // steps) + self.steps_offset >= total:
            raise ValueError(f"steps {steps} with steps_offset {self.steps_offset}: the first step "
                             f"would be past T - 1 = {total - 1}; use spacing='trailing'")
        ratio = total // steps
        return [i * ratio + self.steps_offset for i in reversed(range(steps))]

    def ddim_step(self, model_output: torch.Tensor, t, t_prev, x_t: torch.Tensor, eta: float = 0.0,
                  noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """One DDIM update x_t -> x_{t_prev} (DDIM eq. 12 and 16; diffusers' DDIMScheduler.step).

        t_prev < 0 means the final step (alpha_bar = final_alpha_cumprod). eta = 0 is deterministic;
        eta = 1 is DDPM's ancestral step. `noise` (or `generator`) supplies the fresh noise when eta > 0.
        """
        x_t = at_least_float32(x_t)  # every update in float32 (module docstring, "Numerics")
        a_t, a_prev = self._abar(t, x_t), self._abar(t_prev, x_t)
        x0, eps = self.predict_x0_eps(model_output, x_t, t)
        variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev)  # sigma_t^2 / eta^2, eq. 16
        std = eta * variance.sqrt()
        direction = (1.0 - a_prev - std ** 2).clamp(min=0).sqrt() * eps  # "direction pointing to x_t"
        x_prev = a_prev.sqrt() * x0 + direction
        if eta > 0:
            x_prev = x_prev + std * (noise if noise is not None else gaussian_like(x_t, generator))
        return x_prev

    def ddpm_step(self, model_output: torch.Tensor, t, t_prev, x_t: torch.Tensor,
                  noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """One ancestral step: sample the posterior q(x_{t_prev} | x_t, x0 = predicted x0) (DDPM eq. 6-7).

        Over a strided grid the one-step alpha is a_t / a_prev. Written from the posterior, not from
        DDIM, so that the test can check it equals `ddim_step(eta=1)`; the test also checks it equals
        diffusers' DDPMScheduler.step (variance "fixed_small", no clipping: SD's config).
        """
        x_t = at_least_float32(x_t)  # every update in float32 (module docstring, "Numerics")
        a_t, a_prev = self._abar(t, x_t), self._abar(t_prev, x_t)
        alpha = a_t / a_prev
        beta = 1.0 - alpha
        x0, _ = self.predict_x0_eps(model_output, x_t, t)
        mean = (a_prev.sqrt() * beta / (1.0 - a_t)) * x0 + (alpha.sqrt() * (1.0 - a_prev) / (1.0 - a_t)) * x_t
        variance = (1.0 - a_prev) / (1.0 - a_t) * beta  # beta-tilde: 0 on the final step
        noise = noise if noise is not None else gaussian_like(x_t, generator)
        return mean + variance.clamp(min=0).sqrt() * noise

    @torch.no_grad()
    def sample(self, model, noise: torch.Tensor, cond: dict | None, steps: int = DEFAULT_STEPS,
               sampler: str = DEFAULT_SAMPLER, w_src: float = 1.0, w_fus: float = 1.0, eta: float = 0.0,
               return_trajectory: bool = False, progress: bool = False, generator: torch.Generator | None = None):
        """Generate from pure noise (B, C, h, w). Returns x0, or (x0, [x_T, ..., x0]) (steps + 1 states).

        sampler "ddim" (eta = 0 deterministic, eta > 0 stochastic) or "ddpm" (ancestral). One batched
        model call per step; `nfe()` gives the network evaluations per image.
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler {sampler!r}: expected one of {SAMPLERS}")
        ts = self.timesteps(steps)
        x, trajectory = at_least_float32(noise), [noise]
        for i in progress_bar(range(len(ts)), progress, f"{sampler} {steps} steps"):
            t, t_prev = ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)
            t_in = torch.full((x.shape[0],), float(t), device=x.device)  # (B,) float time for the network
            out = guided_output(model, x, t_in, cond, w_src, w_fus)
            if sampler == "ddim":
                x = self.ddim_step(out, t, t_prev, x, eta=eta, generator=generator)
            else:
                x = self.ddpm_step(out, t, t_prev, x, generator=generator)
            if return_trajectory:
                trajectory.append(x)
        return (x, trajectory) if return_trajectory else x


# ----------------------------------------------------------------------------- NFE table (command line)

def nfe_table(steps: int = DEFAULT_STEPS, batch: int = 2) -> list[tuple[str, int, int, int]]:
    """(setting, nfe() per image, counted evaluations per image, forward calls) for FPDM's conditions."""
    d, rows = Diffusion(), []
    cond = {key: torch.zeros(batch, 1) for key in COND_KEYS}  # the counter ignores the values
    for sampler, w_src, w_fus in [("ddpm", 2.0, 2.0), ("ddim", 1.0, 1.0), ("ddim", 2.0, 2.0), ("ddim", 2.0, 3.0)]:
        counter = RowCounter()
        d.sample(counter, torch.zeros(batch, 4, 2, 2), cond, steps, sampler, w_src, w_fus)
        label = f"{sampler} {steps} steps, w_src={w_src:g} w_fus={w_fus:g}"
        rows.append((label, nfe(steps, sampler, COND_KEYS, w_src, w_fus), counter.rows // batch, counter.calls))
    return rows


def main(argv=None) -> None:
    nfe_cli(nfe_table, DEFAULT_STEPS, "NFE per image of the diffusion samplers (FPDM conditions)", argv)


if __name__ == "__main__":
    main()
