"""Never worse than the base, on a real ComfyUI 0.3.75 server: a CI-sized subset of
tests/comfyui_host/never_worse_sweep.py (exact Gaussian-mixture models, eps and flow, CFG 3 and 7, 4 and 6 steps,
user's schedule and fitted schedule), measured on 256 fresh latents against a converged reference.

What is asserted is the product promise: a delivered λ file beats the base sampler the user would run (the same
sampler on the user's own schedule) on fresh seeds, what it claims is not biased against what is measured, nothing
errors, and something is delivered. The mixture is the "overlapping" one (gmm.MIXTURES): on the "separated" one a
few % of latents end in another island under any few-step sampler and an RMSE over fresh seeds counts mostly those
(the full sweep reports both; docs/benchmarks.md). Plus: heunpp2 is not offered or distills without error, and the
distill node's sigmas output is not the very tensor it was given (ComfyUI's uni_pc writes into the tensor it
samples with).

Skips without ComfyUI locally; FAILS under CI=true (see tests/comfyui_host/harness.py).
"""

import importlib.util
import math
import os

import pytest
import torch

from comfyui_host.harness import error_message, start_server
from comfyui_host.never_worse_sweep import (
    CLAIM_TOLERANCE,
    SERVER_ARGS,
    SERVER_ENV,
    Case,
    References,
    Settings,
    claim_ok,
    is_worse,
    iter_cases,
    latent_values,
    markdown,
    model_nodes,
    offered_samplers,
    reference_graph,
    rmse,
    run_case,
    run_sweep,
)

CI_SAMPLERS = ("euler", "dpmpp_2m", "ipndm", "heun", "uni_pc")
CI_CFGS = (3.0, 7.0)
CI_STEPS = (4, 6)
SCHEDULERS = {"eps": "karras", "flow": "simple"}
GMM_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "comfyui_host", "dode_test_pack", "gmm.py")


def load_gmm():
    """The test pack's pure-torch mixture module (the pack itself imports ComfyUI)."""
    spec = importlib.util.spec_from_file_location("dode_test_gmm", GMM_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the exact denoiser, without ComfyUI --------------------------------------------------------------------------
def test_one_component_posterior_mean_is_the_gaussian_formula():
    gmm = load_gmm()
    mixture = gmm.make_mixture(16, seed=3, components=1)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sigma, alpha = torch.full((5,), 0.7, dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64)
    s2 = mixture.stds[0] ** 2
    expected = mixture.means[0] + alpha[:, None] * s2 / (alpha[:, None] ** 2 * s2 + sigma[:, None] ** 2) * (
        x - alpha[:, None] * mixture.means[0])
    got = gmm.posterior_mean(mixture, x, sigma, alpha, torch.zeros(5))
    assert torch.allclose(got, expected, atol=1e-12)


def test_posterior_mean_beats_any_other_estimate_and_follows_the_conditioning():
    """E[x0 | x] has the smallest mean squared error of all estimates: perturbing it costs, on Monte-Carlo draws."""
    gmm = load_gmm()
    mixture = gmm.make_mixture(32, seed=0)
    x0 = gmm.sample_data(mixture, cond=2.0, count=4000, seed=1)
    sigma = torch.full((4000,), 1.5, dtype=torch.float64)
    alpha = torch.ones(4000, dtype=torch.float64)
    x = x0 + sigma[:, None] * torch.randn(x0.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    denoised = gmm.posterior_mean(mixture, x, sigma, alpha, torch.full((4000,), 2.0))
    best = (denoised - x0).square().mean()
    for other in (0.95 * denoised + 0.05 * x, denoised + 0.05, gmm.posterior_mean(mixture, x, sigma, alpha,
                                                                                   torch.zeros(4000))):
        assert (other - x0).square().mean() > best
    # flow at sigma = 1 (alpha = 0): nothing is known of x0 but the conditioning's prior mean
    prior = gmm.posterior_mean(mixture, x[:2], torch.ones(2), torch.zeros(2), torch.full((2,), 2.0))
    weights = torch.softmax(2.0 * mixture.weight_logits, 0)
    assert torch.allclose(prior, (weights[:, None] * mixture.means).sum(0).expand(2, -1), atol=1e-12)


# --- on the server --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy = start_server(str(tmp_path_factory.mktemp("never_worse")), env=SERVER_ENV, extra_args=SERVER_ARGS)
    torch.set_num_threads(1)
    yield comfy
    comfy.stop()


@pytest.fixture(scope="module")
def sweep(server):
    samplers = [name for name in CI_SAMPLERS if name in offered_samplers(server)]
    cases = iter_cases(("eps", "flow"), SCHEDULERS, samplers, CI_CFGS, CI_STEPS, (False, True))
    rows = list(run_sweep(server, cases, Settings(mixture="overlapping")))
    print("\n" + markdown(rows))  # shown with pytest -s or on failure
    return rows


def describe(row) -> str:
    keys = ("model", "sampler", "cfg", "steps", "fit_schedule", "status", "measured_ratio", "claim_ratio",
            "measured_base", "measured_dode", "message")
    return "{" + ", ".join(f"{k}={row[k]!r}" for k in keys if k in row) + "}"


def test_the_reference_is_converged_and_cfg_bends_the_ode(server):
    """500 and 1000 reference steps agree to 1e-4 RMS for both model types, so 500 steps is a converged reference;
    and cfg 1 and 7 end far apart (the conditioning matters)."""
    settings = Settings(test_batch=8)
    for model in ("eps", "flow"):
        ends = {}
        for cfg, steps in ((7.0, 500), (7.0, 1000), (1.0, 500)):
            case = Case(model, SCHEDULERS[model], "euler", cfg, 4, False)
            entry = server.run(reference_graph(case, settings, steps=steps))
            assert entry["status"]["status_str"] == "success", error_message(entry)
            ends[cfg, steps] = latent_values(entry, "ref_out")
        assert rmse(ends[7.0, 500], ends[7.0, 1000]) < 1e-4, (model, rmse(ends[7.0, 500], ends[7.0, 1000]))
        assert rmse(ends[7.0, 500], ends[1.0, 500]) > 0.1, model


def test_the_ci_samplers_are_offered(server):
    offered = offered_samplers(server)
    assert set(CI_SAMPLERS) <= set(offered), sorted(set(CI_SAMPLERS) - set(offered))


def test_no_case_ends_in_an_error(sweep):
    errors = [describe(row) for row in sweep if row["status"] == "error"]
    assert not errors, "\n".join(errors)


def test_some_fits_are_delivered(sweep):
    for model in ("eps", "flow"):
        assert any(row["status"] == "delivered" for row in sweep if row["model"] == model), markdown(sweep)


def test_no_delivered_fit_is_worse_than_its_base_on_fresh_seeds(sweep):
    """On the user's schedule: not worse at all. On a fitted schedule, chosen on half the batch and proved on the
    other half: not worse beyond chance (a paired test over the 256 fresh latents)."""
    worse = [describe(row) for row in sweep
             if is_worse(row) and (row.get("schedule_source") != "fitted" or row["worse_beyond_chance"])]
    assert not worse, f"{len(worse)} delivered fits worse than the base sampler:\n" + "\n".join(worse)


def median_claim_error(rows, key) -> float:
    errors = sorted(row[key] for row in rows if row.get(key) is not None)
    return errors[len(errors) // 2]


def delivered_fits(sweep, fitted_schedule: bool):
    return [row for row in sweep if row["status"] == "delivered" and row["fit_schedule"] == fitted_schedule]


def test_the_claims_are_not_biased_against_what_users_measure(sweep):
    """The ratio a file claims comes from 8 latents: one claim can be off by its standard error (the ± it shows), but
    over the subset the claims must not be optimistic: the median claim is within 20% of the median measured ratio
    on fresh seeds, for the RMSE and for a typical latent, on the user's schedule; for a typical latent on a fitted
    schedule (measured: -5% and -1%; -11%)."""
    for fitted_schedule, keys in ((False, ("claim_error", "typical_claim_error")), (True, ("typical_claim_error",))):
        delivered = delivered_fits(sweep, fitted_schedule)
        for key in keys:
            median = median_claim_error(delivered, key)
            assert abs(median) <= 0.2, (fitted_schedule, key, median, markdown(sweep))
    delivered = [row for row in sweep if row["status"] == "delivered"]
    within = sum(1 for row in delivered if claim_ok(row))
    print(f"claims within {CLAIM_TOLERANCE:.0%}: {within}/{len(delivered)}")


@pytest.mark.xfail(strict=True, reason="known, open (issue 16): a fitted schedule's RMSE claim comes from the 4 "
                                       "latents the schedule search did not use and misses the rare far latents that "
                                       "dominate an RMSE over fresh seeds; measured median claim error -54%")
def test_a_fitted_schedules_rmse_claim_is_not_biased(sweep):
    median = median_claim_error(delivered_fits(sweep, True), "claim_error")
    assert abs(median) <= 0.2, median


def test_heunpp2_is_not_offered_or_distills_without_error(server):
    if "heunpp2" not in offered_samplers(server):
        return
    references = References(server, Settings())
    for model in ("eps", "flow"):
        row = run_case(server, Case(model, SCHEDULERS[model], "heunpp2", 3.0, 4, False), Settings(), references)
        assert row["status"] in ("delivered", "no_gain"), describe(row)


def test_the_distill_sigmas_output_is_not_the_tensor_it_was_given(server):
    """ComfyUI 0.3.75's uni_pc writes 0.001 into the last sigma of the tensor it samples with. A BasicScheduler
    feeds both the distill node and, after it, a uni_pc SamplerCustomAdvanced; whoever reads the distill node's
    sigmas output afterwards must still see the schedule end in 0."""
    settings = Settings(test_batch=2)
    graph = model_nodes(Case("eps", "karras", "euler", 3.0, 4, False), settings)
    graph.update({
        "fit_latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 8}},
        "distill": {"class_type": "DODEDistillGuider", "inputs": {
            "guider": ["guider", 0], "sigmas": ["sched", 0], "latent_image": ["fit_latent", 0],
            "sampler_name": "euler", "teacher_sampler": "auto", "teacher_factor": 4, "history": "1",
            "fit_schedule": False, "filename": "aliasing"}},
        "after_distill": {"class_type": "DODETestLatentAfter",
                          "inputs": {"samples": ["test_latent", 0], "after_text": ["distill", 2]}},
        "unipc_sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "uni_pc"}},
        "unipc": {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["test_noise", 0], "guider": ["guider", 0], "sampler": ["unipc_sampler", 0],
            "sigmas": ["sched", 0], "latent_image": ["after_distill", 0]}},
        "distill_sigmas": {"class_type": "DODETestSigmas", "inputs": {"sigmas": ["distill", 1], "after": ["unipc", 0]}},
        "scheduler_sigmas": {"class_type": "DODETestSigmas", "inputs": {"sigmas": ["sched", 0], "after": ["unipc", 0]}},
    })
    entry = server.run(graph)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    scheduler_end = entry["outputs"]["scheduler_sigmas"]["sigmas"][-1]
    assert math.isclose(scheduler_end, 0.001, rel_tol=1e-3), "uni_pc no longer writes into its sigmas: test is moot"
    distill_sigmas = entry["outputs"]["distill_sigmas"]["sigmas"]
    assert distill_sigmas[-1] == 0.0, f"the distill node's sigmas output was written by uni_pc: {distill_sigmas}"
