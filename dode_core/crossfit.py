"""λ of one model call, fitted on the whole batch and cross-fitted on every latent (leave one out).

At call k each latent i contributes its Gram matrix, right side and residual energy over the call's directions
``v_j`` (blackbox: the weight of this call's output in the next state times the history terms):

    G_i = [<v_j, v_l>]_jl,   b_i = [<t_i - x0_i, v_j>]_j,   c_i = |t_i - x0_i|^2

where t_i is the teacher's state at the next call's sigma and x0_i the next state with λ = 0. Then

    lambda        = G^-1 b                             over every latent: what the file delivers
    lambda_(-i)   = (G - G_i)^-1 (b - b_i)              without latent i: what latent i is corrected with
    E_i(lambda)   = c_i - 2 lambda.b_i + lambda^T G_i lambda    (latent i's next-state error)

so every latent is judged by λ it was not fitted on, at no model cost, and a batch of 8 proves with 8. The
number of terms (0 = leave the call uncorrected) is the one with the least leave-one-out error summed over the
batch; ties go to fewer terms.

A correction is trusted only a little beyond where the fit saw it work. Each call's correction
``sum_j lambda_j term_j`` is limited, latent by latent, to LIMIT_MARGIN times the largest size it had on the fit
batch, measured against the call's own noise estimate (``limit`` in the file):

    size_i = rms(sum_j lambda_j term_ij) / rms(x_i - D_i),    limit = LIMIT_MARGIN max_i size_i

A fresh latent whose outputs change much faster than any fit latent's (one still choosing between modes) has its
correction scaled down to the limit instead of extrapolated further; on Gaussian data every latent's size is the
same and nothing is limited. In the proof latent i is limited by LIMIT_MARGIN times the largest size of the *other*
latents under its own leave-one-out λ, so the proof measures what a fresh seed gets.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from .blackbox import ModelProxy, SamplerMap, SamplerRefusedError, close_enough, sigma_value
from .correction import differences, working_precision
from .file_format import MAX_ABS_LAMBDA
from .rules import LIMIT_MARGIN

log = logging.getLogger(__name__)

# one-sided 95% quantiles of Student's t by degrees of freedom (beyond 30: the normal quantile, 1.645)
T_95 = (6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782, 1.771, 1.761, 1.753,
        1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711, 1.708, 1.706, 1.703, 1.701, 1.699, 1.697)


def dots(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """Per-latent inner products ``out[n, i, j] = <a_i[n], b_j[n]>`` as float64 on the CPU (the sums are formed
    in the tensors' own precision, at least float32, on their device: no float64 on devices that lack it)."""
    flat_a = [t.reshape(t.shape[0], -1) for t in a]
    flat_b = [t.reshape(t.shape[0], -1) for t in b]
    out = torch.stack([torch.stack([(u * v).sum(-1) for v in flat_b], -1) for u in flat_a], -2)
    return out.to("cpu", torch.float64)


def batch_stats(directions: list[torch.Tensor], residual: torch.Tensor):
    """Per-latent Gram matrices G (B, m, m), right sides b (B, m) and residual energies c (B,), float64, CPU."""
    G = dots(directions, directions)
    b = dots(directions, [residual])[..., 0]
    c = dots([residual], [residual])[:, 0, 0]
    return G, b, c


def solve(G: torch.Tensor, b: torch.Tensor, floor: float) -> torch.Tensor:
    """Least squares ``G lam = b`` (one system or a batch); directions with energy below ``floor`` get no λ."""
    return (torch.linalg.pinv(G, atol=floor, rtol=1e-12, hermitian=True) @ b.unsqueeze(-1)).squeeze(-1)


def latent_errors(G, b, c, lambdas) -> torch.Tensor:
    """``E_i = c_i - 2 lam_i.b_i + lam_i^T G_i lam_i`` for per-latent λ (B, m)."""
    return c - 2 * (lambdas * b).sum(-1) + torch.einsum("bi,bij,bj->b", lambdas, G, lambdas)


@dataclass
class CallFit:
    """The fit of one call.

    lambdas:     (max_terms,) float64, float32-exact: what the file holds for this call
    per_latent:  (B, max_terms) float64: the λ each latent was corrected with, fitted without it
    terms:       the number of terms used (0: the call is left uncorrected)
    energy_before, energy_after: the next state's squared error summed over the batch with λ = 0 and with each
                 latent's leave-one-out λ
    limit:       LIMIT_MARGIN times the largest size of a latent's correction with ``lambdas`` on the batch (its RMS
                 over the RMS of the call's ``x - D``): what a sampler lets a correction reach (0: uncorrected)
    """

    lambdas: torch.Tensor
    per_latent: torch.Tensor
    terms: int
    energy_before: float
    energy_after: float
    limit: float = 0.0


def correction_sizes(T: torch.Tensor, lambdas: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``out[i, j]``: the size of latent j's correction ``sum_m lambdas[i, m] term_jm`` under latent i's λ: its RMS
    over ``noise[j]``, latent j's ``rms(x - D)``, from the per-latent mean Gram matrices of the terms ``T`` (B, m, m)
    and λ (B, m)."""
    squares = torch.einsum("im,jmn,in->ij", lambdas, T, lambdas)
    return squares.clamp(min=0).sqrt() / noise.clamp(min=1e-300)[None, :]


def bound_call(call: CallFit, T: torch.Tensor, noise: torch.Tensor, G, b, c) -> CallFit:
    """``call`` with each latent's leave-one-out correction scaled down to LIMIT_MARGIN times the largest size of
    the other latents' (under the same λ), its energy after recomputed, and the limit of the delivered λ (see the
    module's docstring). ``T``: the terms' per-latent mean Gram matrices; ``noise``: each latent's ``rms(x - D)``."""
    m = call.terms
    if not m:
        return call
    loo = call.per_latent[:, :m]
    sizes = correction_sizes(T[:, :m, :m], loo, noise)  # (B, B)
    allowed = LIMIT_MARGIN * sizes.masked_fill(torch.eye(len(sizes), dtype=torch.bool), -math.inf).amax(1)
    own = sizes.diagonal()
    scale = torch.where(own > allowed, allowed / own.clamp(min=1e-300), torch.ones_like(own))
    per_latent = call.per_latent.clone()
    per_latent[:, :m] = loo * scale[:, None]
    after = float(latent_errors(G[:, :m, :m], b[:, :m], c, per_latent[:, :m]).sum())
    delivered = call.lambdas[:m].expand(len(sizes), m)
    limit = LIMIT_MARGIN * float(correction_sizes(T[:, :m, :m], delivered, noise).diagonal().max())
    return CallFit(call.lambdas, per_latent, m, call.energy_before, after, limit)


def fit_call(G, b, c, floor: float, history, max_terms: int) -> CallFit:
    """The call's λ from per-latent statistics (batch_stats over its available terms, m <= max_terms).

    history: a term count (the call uses it, or none) or "auto" (any count up to the available terms): the
    choice with the least leave-one-out error wins, so a call whose λ do not help latents they were not fitted on
    is left uncorrected.
    """
    batch, available = c.shape[0], G.shape[-1]
    before = float(c.sum())
    delivered = torch.zeros(max_terms, dtype=torch.float64)
    per_latent = torch.zeros(batch, max_terms, dtype=torch.float64)
    counts = range(1, available + 1) if history == "auto" else [min(int(history), available)] if available else []
    best_terms, best_error, best_loo = 0, before, None
    G_total, b_total = G.sum(0), b.sum(0)
    for m in counts:
        loo = solve(G_total[:m, :m] - G[:, :m, :m], b_total[:m] - b[:, :m], floor)
        error = float(latent_errors(G[:, :m, :m], b[:, :m], c, loo).sum())
        if error < best_error:
            best_terms, best_error, best_loo = m, error, loo
    if best_terms:
        lambdas = solve(G_total[:best_terms, :best_terms], b_total[:best_terms], floor)
        if not bool(lambdas.abs().max() <= MAX_ABS_LAMBDA) or not bool(best_loo.abs().max() <= MAX_ABS_LAMBDA):
            log.info("a call's λ %s are beyond %g: this call is left uncorrected", lambdas.tolist(), MAX_ABS_LAMBDA)
            return CallFit(delivered, per_latent, 0, before, before)
        delivered[:best_terms] = lambdas.float().double()  # exactly the λ the file will hold
        per_latent[:, :best_terms] = best_loo
    return CallFit(delivered, per_latent, best_terms, before, best_error)


def t_critical(degrees_of_freedom: int) -> float:
    """The one-sided 95% quantile of Student's t (T_95; the normal quantile beyond its end)."""
    return T_95[degrees_of_freedom - 1] if degrees_of_freedom <= len(T_95) else 1.645


def proves_gain(base_errors: torch.Tensor, dode_errors: torch.Tensor) -> bool:
    """Whether D-ODE beats the base on these latents by more than chance (squared final-state errors per latent):

        mean(g) > t_0.95(n - 1) * std(g) / sqrt(n),   g_i = log(e_base,i / e_dode,i)    (a paired t-test at 95%)
        and  sum e_dode < sum e_base                                                    (the RMSE is lower too)

    The test is on log ratios, not on differences: latents far from the teacher (another mode, a larger scale)
    would dominate differences and hide a gain every latent shows; the RMSE condition keeps a fit that helps the
    typical latent but hurts the far ones from passing."""
    base, dode = base_errors.double(), dode_errors.double()
    tiny = 1e-12 * float(base.mean()) + 1e-300  # exact results (error 0) compare as very good, not as infinite
    gain = torch.log((base + tiny) / (dode + tiny))
    count = len(gain)
    if not bool(dode.sum() < base.sum()):
        return False
    if count < 2:
        return bool(gain.sum() > 0)
    return bool(gain.mean() > t_critical(count - 1) * gain.std() / math.sqrt(count))


class CrossFitRun(ModelProxy):
    """The student run, driven by the real sampler once: at call k it reads the state the sampler passes, checks
    it against the state the sampler's affine map predicted, calls the model, fits λ_k (crossfit.fit_call) and
    hands back each latent's output corrected with the λ fitted without it. Holds O(history + window)
    full-batch tensors."""

    def __init__(self, model, name, sampler_map: SamplerMap, targets, history, max_terms: int):
        super().__init__(model)
        self.name, self.map, self.targets = name, sampler_map, targets
        self.history, self.max_terms = history, max_terms
        self.raw: list[torch.Tensor] = []  # the last max_terms + 1 raw outputs (working precision)
        self.given: list[torch.Tensor] = []  # the last outputs_kept corrected outputs the sampler was given
        self.start: torch.Tensor | None = None
        self.predicted: torch.Tensor | None = None  # the next input the map predicts
        self.predicted_scale = 0.0  # the norms of the terms summed into it, for the rounding tolerance
        self.fits: list[CallFit] = []

    def refuse(self, why: str):
        raise SamplerRefusedError(f"sampler '{self.name}' {why}; D-ODE needs a deterministic ODE sampler with "
                                  "fixed steps that is affine in the denoised output (euler, heun, dpmpp_2m, ...).")

    def check_state(self, actual: torch.Tensor, where: str) -> None:
        if not close_enough(actual.to(self.predicted.dtype), self.predicted, self.predicted_scale):
            self.refuse(f"did not reach the state its stand-in probes predicted {where} (it injects noise, keeps "
                        "state between runs, or is not affine in the denoised output)")

    def __call__(self, x, sigma, **extra_args):
        k = len(self.fits)
        calls = len(self.map.call_sigmas)
        if k >= calls or not math.isclose(sigma_value(sigma), self.map.call_sigmas[k], rel_tol=1e-5, abs_tol=1e-8):
            self.refuse(f"made model call {k} at sigma {sigma_value(sigma):.4g}, not as on its free probe run "
                        "(it adapts its steps)")
        if k == 0:
            self.start = x.detach().clone() if self.map.needs_start else None
        else:
            self.check_state(x, f"at model call {k}")
        denoised = working_precision(self.inner(x, sigma, **extra_args))
        self.raw.append(denoised)
        del self.raw[: -(self.max_terms + 1)]
        terms = differences(self.raw, self.max_terms)

        # x_next(λ) = x_zero + own * sum_j λ_j term_j, all in the outputs' working precision
        step = self.map.steps[k]
        x_zero = x.to(denoised.dtype) * step.alpha
        scale = abs(step.alpha) * float(x.norm())
        if step.gamma:
            x_zero.add_(self.start.to(denoised.dtype), alpha=step.gamma)
            scale += abs(step.gamma) * float(self.start.norm())
        earlier = self.given[len(self.given) - (len(step.betas) - 1):] if len(step.betas) > 1 else []
        for beta, output in zip(step.betas, earlier + [denoised], strict=True):
            x_zero.add_(output, alpha=beta)
            scale += abs(beta) * float(output.norm())
        directions = [term * step.own for term in terms]

        noise = (x.to(denoised.dtype) - denoised).reshape(len(denoised), -1).square().mean(1).sqrt()
        call_fit = self._fit(x_zero, terms, noise.to("cpu", torch.float64), directions, k)
        self.fits.append(call_fit)
        corrected = denoised
        if call_fit.terms:
            corrected = denoised.clone()
            for j in range(call_fit.terms):
                lam = _per_latent(call_fit.per_latent[:, j], denoised)
                corrected.add_(terms[j] * lam)
                x_zero.add_(directions[j] * lam)
                scale += float(call_fit.per_latent[:, j].abs().max()) * float(directions[j].norm())
        self.predicted, self.predicted_scale = x_zero, scale
        self.given.append(corrected)
        del self.given[: -max(self.map.outputs_kept, 1)]
        return corrected

    def _fit(self, x_zero, terms, noise, directions, k) -> CallFit:
        residual = self.targets[k].to(x_zero.device, x_zero.dtype) - x_zero
        if not directions:  # the first call has no earlier output to correct with
            energy = float(dots([residual], [residual]).sum())
            return CallFit(torch.zeros(self.max_terms, dtype=torch.float64),
                           torch.zeros(x_zero.shape[0], self.max_terms, dtype=torch.float64), 0, energy, energy)
        G, b, c = batch_stats(directions, residual)
        # directions with energy below (1e-6 |x|)^2 are rounding, not signal: they get no λ
        floor = 1e-12 * float(dots([x_zero], [x_zero]).sum())
        call = fit_call(G, b, c, floor, self.history, self.max_terms)
        return bound_call(call, dots(terms, terms) / x_zero[0].numel(), noise, G, b, c)


def _per_latent(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) float64 λ as a (B, 1, ..., 1) tensor in ``like``'s dtype and device."""
    return values.to(like.device, like.dtype).view(-1, *([1] * (like.dim() - 1)))


def final_errors(final: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each latent's final state (float64, CPU)."""
    error = final.detach().to("cpu", torch.float64) - reference.to("cpu", torch.float64)
    return error.reshape(error.shape[0], -1).square().mean(-1)


def ratio_standard_error(base_errors: torch.Tensor, dode_errors: torch.Tensor) -> float:
    """Standard error of ``R = sqrt(sum e_dode / sum e_base)`` over the latents (delta method, paired):

        SE(R) = std(e_dode,i - R^2 e_base,i) / (sqrt(n) mean(e_base) 2 R)

    With 8 latents it is typically 10-20% of R: what a claim made on the fit batch can promise."""
    count = len(base_errors)
    ratio_squared = float(dode_errors.sum() / base_errors.sum())
    if count < 2 or ratio_squared <= 0:
        return 0.0
    spread = float((dode_errors - ratio_squared * base_errors).std())
    return spread / (math.sqrt(count) * float(base_errors.mean()) * 2 * math.sqrt(ratio_squared))


def typical_ratio(base_errors: torch.Tensor, dode_errors: torch.Tensor) -> float:
    """The median over the latents of ``sqrt(e_dode,i / e_base,i)``: what D-ODE does to a typical seed. An RMSE over
    fresh seeds can be dominated by the few latents no few-step sampler brings near the converged result (a sample
    at a boundary between modes ends in another); a batch of 8 rarely holds one, and then its RMSE ratio speaks for
    the typical latent, which this says directly."""
    tiny = 1e-300
    return float(((dode_errors.double() + tiny) / (base_errors.double() + tiny)).sqrt().median())
