"""The D-ODE correction of a denoiser's output, and samplers that apply fitted λ.

    D~_k = D_k + sum_j lambda[k, j-1] * (D_{k-j+1} - D_{k-j}),   j = 1..history, terms with k-j < 0 absent

``D_k`` is the raw output of model call ``k``; the base sampler receives ``D~_k`` and is not changed. A file that
records a correction limit per call has each latent's correction ``D~_k - D_k`` scaled down to ``limit * rms(x_k -
D_k)`` where it is larger (a margin over the largest size the fit saw: crossfit.bound_call).

Sampling with λ should cost what the base sampler costs. So the schedule probe (a run of the sampler with a
free stand-in) runs once per distinct (sampler, sigmas, options, latent format) and is cached, and the
correction of a call is one fused kernel (``lerp``) over tensors the sampler already holds.
"""

from __future__ import annotations

import collections
import functools
import math
import threading

import torch

from .blackbox import (
    ModelProxy,
    SamplerRefusedError,
    check_deterministic,
    probe_call_sigmas,
    sampler_name,
    sigma_value,
)
from .file_rules import check_latent
from .lambdas_file import Lambdas, ScheduleMismatchError
from .rules import SIGMA_RTOL

# Corrections of these output dtypes are returned in the dtype, rounded once. bfloat16 (8-bit mantissa) is not: on
# the demo model its rounded correction moved final states by 2e-3 to 5e-3 RMS, 1.4 to 3 times what its model's own
# rounding moves them, where float16's moved them 3e-4 to 4e-4, about its model's own (bench/overhead.py --half).
ROUNDED_ONCE_DTYPES = (torch.float16, torch.float32, torch.float64)
PROBE_CACHE_SIZE = 32  # distinct schedules remembered; a host rarely uses more than a handful
MAX_KEYED_OPTION_ELEMENTS = 4096  # a tensor option larger than this is not worth keying: such runs probe each time


def working_precision(denoised: torch.Tensor) -> torch.Tensor:
    """At least float32: history terms and corrections of a float16/bfloat16 model are formed without re-rounding."""
    return denoised.to(torch.promote_types(denoised.dtype, torch.float32))


def differences(raw_outputs: list[torch.Tensor], history: int) -> list[torch.Tensor]:
    """The history terms at the newest call: ``[D_k - D_{k-1}, D_{k-1} - D_{k-2}, ...]``, at most ``history``."""
    count = min(history, len(raw_outputs) - 1)
    return [raw_outputs[-j] - raw_outputs[-j - 1] for j in range(1, count + 1)]


def apply_correction(denoised: torch.Tensor, terms: list[torch.Tensor], lambdas_k: torch.Tensor) -> torch.Tensor:
    """``D~ = D + sum_j lambdas_k[j] * terms[j]``; ``lambdas_k`` is (history,) or (history, channels).

    The fit's form (it needs the terms anyway). All-zero λ return ``denoised`` itself, so λ = 0 reproduces
    the base sampler bit for bit. Otherwise the sum is formed in at least float32.
    """
    if not terms or not bool(lambdas_k.any()):
        return denoised
    corrected = working_precision(denoised).clone()
    for lam, term in zip(lambdas_k.to(denoised.device), terms, strict=False):  # λ beyond the terms are 0
        if lam.dim() == 1:  # one λ per latent channel (dim 1)
            lam = lam.view(1, -1, *([1] * (term.dim() - 2)))
        corrected += lam * term
    return corrected


# ------------------------------------------------------------------------------------------ the correction


def call_weights(lam: Lambdas) -> list[list]:
    """Per call, the λ of the terms that exist there (call ``k`` has ``min(k, history)``), as python floats
    (scalar λ) or (channels,) float64 tensors (per-channel λ); an empty list where every λ of the call is 0.

    Read once per run, so no call converts or moves λ again.
    """
    per_channel = lam.lambdas.dim() == 3
    weights = []
    for k, lambdas_k in enumerate(lam.lambdas.tolist()):  # one conversion: python floats, exact float32 values
        lambdas_k = lambdas_k[: min(k, lam.history)]
        if not any(map(any, lambdas_k) if per_channel else lambdas_k):
            weights.append([])
        elif per_channel:
            weights.append([torch.tensor(channels, dtype=torch.float64) for channels in lambdas_k])
        else:
            weights.append(lambdas_k)
    return weights


def _broadcast(weight, like: torch.Tensor, dtype: torch.dtype):
    """A python float as is; a (channels,) λ as a (1, channels, 1, ...) tensor on ``like``'s device."""
    if isinstance(weight, float):
        return weight
    return weight.to(like.device, dtype).view(1, -1, *([1] * (like.dim() - 2)))


def corrected_output(denoised: torch.Tensor, previous: list[torch.Tensor], weights: list) -> torch.Tensor:
    """``D~_k = D_k + sum_j w_j (D_{k-j+1} - D_{k-j})`` with ``previous = [..., D_{k-2}, D_{k-1}]``, written as

        D~_k = lerp(D_{k-1}, D_k, 1 + w_1) + sum_{j >= 2} (w_j D_{k-j+1} - w_j D_{k-j})

    so that the usual case (scalar λ, history 1) is one fused kernel in the model's dtype: it reads the two
    outputs once, writes one tensor, and rounds once (float16 lerp computes in float32 inside). Other cases are
    formed in at least float32 and rounded once to the model's dtype; bfloat16 outputs are corrected in float32
    and stay there (see ROUNDED_ONCE_DTYPES). ``weights`` empty: ``denoised`` itself (λ = 0 is the base sampler,
    bit for bit).
    """
    if not weights:
        return denoised
    dtype = denoised.dtype
    if dtype not in ROUNDED_ONCE_DTYPES:
        return _corrected_wide(denoised, previous, weights)
    if len(weights) == 1 and isinstance(weights[0], float) and previous[-1].dtype == dtype:
        return torch.lerp(previous[-1], denoised, 1.0 + weights[0])
    return _corrected_wide(denoised, previous, weights).to(dtype)


def _corrected_wide(denoised: torch.Tensor, previous: list[torch.Tensor], weights: list) -> torch.Tensor:
    """The correction formed in at least float32 and left there (per-channel λ, history > 1, overflow retry)."""
    work = torch.promote_types(denoised.dtype, torch.float32)
    first = _broadcast(weights[0], denoised, work)
    out = torch.lerp(previous[-1].to(work), denoised.to(work), 1.0 + first)
    for j, weight in enumerate(weights[1:], start=2):
        newer, older = previous[-(j - 1)], previous[-j]
        weight = _broadcast(weight, denoised, work)
        if isinstance(weight, float):
            out.add_(newer, alpha=weight).add_(older, alpha=-weight)
        else:
            out.addcmul_(newer, weight).addcmul_(older, weight, value=-1.0)
    return out


def _rms(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.reshape(tensor.shape[0], -1).square().mean(1).sqrt()


def limited(x: torch.Tensor, denoised: torch.Tensor, corrected: torch.Tensor, limit: float) -> torch.Tensor:
    """``corrected`` with each latent's correction (dim 0 indexes the latents) scaled down to ``limit`` times the
    RMS of its ``x - D``:

        D~_i <- D_i + min(1, limit rms(x_i - D_i) / rms(D~_i - D_i)) (D~_i - D_i)

    ``corrected`` itself where no latent's correction is over."""
    work = torch.promote_types(corrected.dtype, torch.float32)
    change = corrected.to(work) - denoised.to(work)
    allowed = limit * _rms(x.to(work) - denoised.to(work))
    size = _rms(change)
    if not bool((size > allowed).any()):
        return corrected
    scale = (allowed / size).clamp(max=1.0).nan_to_num(1.0).view(-1, *([1] * (change.dim() - 1)))
    return (denoised.to(work) + change * scale).to(corrected.dtype)


def all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element is finite: one fused sum first (a NaN or inf makes it non-finite), the exact
    elementwise test only when the sum says so (it can also overflow on huge finite values)."""
    total = tensor.sum(dtype=torch.promote_types(tensor.dtype, torch.float32))
    return math.isfinite(float(total)) or bool(torch.isfinite(tensor).all())


def check_channels(lam: Lambdas, x: torch.Tensor) -> None:
    """A latent with another channel count (dim 1) than the fit's is another model's: ModelMismatchError
    (file_rules.check_latent); per-channel λ need as many channels as they hold: ValueError. Before any model call."""
    if x.dim() >= 2:
        check_latent(lam, x.shape)
    if lam.lambdas.dim() != 3:
        return
    channels = lam.lambdas.shape[2]
    if x.dim() < 2 or x.shape[1] != channels:
        found = f"{x.shape[1]} channels" if x.dim() >= 2 else "no channel dimension"
        raise ValueError(
            f"the λ file has one λ per latent channel for {channels} channels, but this latent "
            f"(shape {tuple(x.shape)}) has {found}. Per-channel λ belong to one model's latent format: "
            "use a λ file distilled with this model."
        )


class DODEDenoiser(ModelProxy):
    """Wraps ``model(x, sigma, **extra_args) -> denoised`` and applies fitted λ call by call.

    One instance serves one sampler run. It keeps references to the last ``history`` raw outputs (the model's
    own tensors, no copies) and checks each call's sigma before the model runs.
    """

    def __init__(self, model, lam: Lambdas):
        super().__init__(model)
        self.lam = lam
        self.weights = call_weights(lam)
        self.limits = lam.correction_limits
        self.raw_outputs: list[torch.Tensor] = []
        self.count = 0

    def __call__(self, x, sigma, **extra_args):
        k = self.count
        self.count += 1
        sigma_k = sigma_value(sigma)
        if k >= self.lam.calls or not math.isclose(sigma_k, self.lam.call_sigmas[k], rel_tol=SIGMA_RTOL, abs_tol=1e-8):
            raise ScheduleMismatchError(
                f"model call {k} is at sigma {sigma_k:.4g}, which the λ file does not expect "
                f"(it has {self.lam.calls} calls); the sampler chose steps of its own."
            )
        if k == 0:
            check_channels(self.lam, x)
        denoised = self.inner(x, sigma, **extra_args)
        previous = self.raw_outputs
        corrected = corrected_output(denoised, previous, self.weights[k])
        if corrected is not denoised and not all_finite(corrected):
            corrected = self._recover_non_finite(k, sigma_k, denoised, previous, corrected)
        if corrected is not denoised and self.limits is not None:
            corrected = limited(x, denoised, corrected, self.limits[k])
        self.raw_outputs = (previous + [denoised])[-self.lam.history :]
        return corrected

    def _recover_non_finite(self, k, sigma_k, denoised, previous, corrected):
        """A non-finite corrected output: name the model call that produced a non-finite output, or keep a
        float16/bfloat16 correction that only overflowed its dtype in float32, or blame the λ."""
        outputs = previous + [denoised]
        for index, output in enumerate(outputs):  # the oldest first: the others may follow from it
            if not bool(torch.isfinite(output).all()):
                call = k - len(outputs) + 1 + index
                raise ValueError(
                    f"the model returned non-finite values (NaN or inf) at model call {call} (sigma "
                    f"{self.lam.call_sigmas[call]:.4g}); D-ODE did not cause them and the base sampler would fail "
                    "the same way. Check the model, its inputs and cfg; try float32 if it runs in half precision."
                )
        if corrected.dtype != torch.promote_types(corrected.dtype, torch.float32):
            wide = _corrected_wide(denoised, previous, self.weights[k])
            if all_finite(wide):
                return wide  # the sampler's state is float32 or wider anyway
        lambdas = ", ".join(f"{v:.4g}" for v in self.lam.lambdas[k, : min(k, self.lam.history)].flatten().tolist())
        raise ValueError(
            f"the D-ODE correction made the output of model call {k} (sigma {sigma_k:.4g}) non-finite: λ = "
            f"[{lambdas}] times the differences of the model's outputs exceed the range of {corrected.dtype}. These "
            "λ cannot have been fitted for this model and schedule; distill λ for them."
        )


# --------------------------------------------------------------------------------- the schedule check


class _LRU:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int):
        self.size = size
        self.items: collections.OrderedDict = collections.OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            if key not in self.items:
                return None
            self.items.move_to_end(key)
            return self.items[key]

    def put(self, key, value) -> None:
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()


_probe_cache = _LRU(PROBE_CACHE_SIZE)


class _Unkeyable(Exception):
    pass


def _freeze(value):
    """A hashable, exact stand-in for an option value; _Unkeyable for values we cannot compare exactly."""
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return type(value).__name__, value
    if isinstance(value, torch.Tensor):
        if value.numel() > MAX_KEYED_OPTION_ELEMENTS:
            raise _Unkeyable
        return _tensor_key(value)
    if isinstance(value, (tuple, list)):
        return type(value).__name__, tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return "dict", tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    raise _Unkeyable


def _tensor_key(tensor: torch.Tensor):
    """dtype, shape and the exact bytes (one small copy to the CPU)."""
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # any dtype, bfloat16 included
    return "tensor", str(tensor.dtype), tuple(tensor.shape), raw.numpy().tobytes()


def _sampler_key(sampler):
    if isinstance(sampler, functools.partial):
        return "partial", _sampler_key(sampler.func), _freeze(sampler.args), _freeze(sampler.keywords)
    hash(sampler)  # an unhashable callable raises TypeError: not keyable
    return sampler  # the object itself, so that its id cannot be reused while the entry lives


def schedule_key(model, x, sigmas, sampler, *, extra_args=None, options=None):
    """What the model-call sigmas of a run depend on, exactly, or None when a part cannot be keyed.

    The sampler (the function object), the exact sigmas (dtype, shape and bytes), the options, what the probe
    reads of the latent (its number of dimensions and its device: it runs on one-element latents), the names of the
    extra_args (their values, like a seed, do not move a fixed-step sampler's calls) and the model's type.
    A sampler that reads more than this from the model (ComfyUI's exp_heun_2_x0 reads its model_sampling)
    is still checked call by call in DODEDenoiser, before each call's model evaluation.
    """
    try:
        sigmas_key = _tensor_key(sigmas) if isinstance(sigmas, torch.Tensor) else _freeze(list(sigmas))
        return (_sampler_key(sampler), sigmas_key, _freeze(dict(options or {})),
                x.dim(), str(x.device),
                tuple(sorted(str(key) for key in (extra_args or {}))), type(model))
    except (_Unkeyable, TypeError):
        return None


class _Refusal(str):
    """A cached refusal: the message of the SamplerRefusedError the probes raised for a key."""


def _checked_call_sigmas(model, x, sigmas, sampler, extra_args, options) -> list[float]:
    """The call sigmas from a zero-output probe, after check_deterministic (two more probes with random outputs and
    different seeds) found no noise and the same steps on this very schedule; SamplerRefusedError otherwise.

    Stand-in probes only. A sampler may inject noise or choose its steps at some step counts only (A1111's Restart
    re-adds noise from 20 steps on), so a check at another schedule (the hosts' lists are built at 8 steps) is not
    enough."""
    call_sigmas, _ = probe_call_sigmas(model, x, sigmas, sampler, extra_args=extra_args, options=options)
    where = f"at {len(sigmas) - 1} steps"
    try:
        varied = check_deterministic(model, x, sigmas, sampler, extra_args=extra_args, options=options)
    except SamplerRefusedError as error:
        raise SamplerRefusedError(f"{where}: {error}") from None
    if varied != call_sigmas:
        raise SamplerRefusedError(
            f"{where}: sampler '{sampler_name(sampler)}' chose other steps when its model's outputs changed (it "
            "adapts its steps); D-ODE needs a deterministic ODE sampler with fixed steps that is affine in the "
            "denoised output."
        )
    return call_sigmas


def cached_call_sigmas(model, x, sigmas, sampler, *, extra_args=None, options=None) -> list[float]:
    """The sigma of every model call ``sampler`` makes on ``sigmas``, checked for this schedule; run once per
    schedule_key (the last PROBE_CACHE_SIZE kept).

    Raises SamplerRefusedError (and remembers it for the key) when the sampler injects noise or adapts its steps on
    this schedule. A changed schedule, sampler or option changes the key, so it is probed (and refused) before any
    model call. Costs stand-in probes only (three runs on one-element latents), no model evaluation.
    """
    key = schedule_key(model, x, sigmas, sampler, extra_args=extra_args, options=options)
    if key is not None:
        known = _probe_cache.get(key)
        if isinstance(known, _Refusal):
            raise SamplerRefusedError(str(known))
        if known is not None:
            return list(known)
    try:
        call_sigmas = _checked_call_sigmas(model, x, sigmas, sampler, extra_args, options)
    except SamplerRefusedError as error:
        if key is not None:
            _probe_cache.put(key, _Refusal(str(error)))
        raise
    if key is not None:
        _probe_cache.put(key, tuple(call_sigmas))
    return call_sigmas


def clear_probe_cache() -> None:
    """Forget every probed schedule (tests; a host that swaps sampler functions in place)."""
    _probe_cache.clear()


# ------------------------------------------------------------------------------------------- sampling


def make_sampler(sampler, lam: Lambdas):
    """A k-diffusion-signature sampler that runs ``sampler`` with D-ODE λ applied to every model call."""

    @functools.wraps(sampler)
    def dode_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        return sample(model, x, sigmas, sampler, lam, extra_args=extra_args, callback=callback,
                      disable=disable, **options)

    dode_sampler.__name__ = dode_sampler.__qualname__ = f"sample_dode_{sampler_name(sampler)}"
    return dode_sampler


def sample(model, x, sigmas, sampler, lam: Lambdas, *, extra_args=None, callback=None, disable=None, **options):
    """Run ``sampler`` with ``lam`` applied; the latent's channels and the schedule are checked against the file
    before any model call (the schedule probe is cached, see cached_call_sigmas)."""
    check_channels(lam, x)
    lam.check_call_sigmas(cached_call_sigmas(model, x, sigmas, sampler, extra_args=extra_args, options=options))
    return sampler(DODEDenoiser(model, lam), x, sigmas, extra_args=extra_args or {}, callback=callback,
                   disable=disable, **options)
