"""Never worse than the base, measured in a real ComfyUI 0.3.75 server on an exact Gaussian-mixture model.

For every sampler the "Distill λ (D-ODE)" node offers (read from the server's /object_info at run time) x cfg x
steps x fit_schedule x model (eps / flow), one case posts one real workflow:

    DODETestGMMModel -> CFGGuider(cfg, positive 2, negative 0) -> BasicScheduler(scheduler, steps)
      distill:  DODEDistillGuider(RandomNoise(fit seed), guider, sigmas, EmptyLatentImage 64x64 x fit batch, ...)
      D-ODE:    SamplerCustomAdvanced(RandomNoise(test seed), guider, distill.sampler, distill.sigmas, 256 latents)
      base:     SamplerCustomAdvanced(the same noise, guider, KSamplerSelect(sampler), BasicScheduler's sigmas)

and compares both final latents with a converged reference of the same noise (dpmpp_2m on a Karras schedule of
500 steps from the user's first sigma down to the model's smallest sigma, then 0; one per model, cfg and first
sigma). Measured: RMSE over the test latents to the reference, for the base sampler on the user's own schedule and
for D-ODE with what the distill node hands out; their ratio, against the ratio the λ file claims
(heldout_rmse_dode / heldout_rmse_base). One JSON line per case on stdout; ``--markdown FILE.jsonl`` summarizes.

    python tests/comfyui_host/never_worse_sweep.py [--models eps flow] [--samplers euler heun] [--cfgs 1 3 7]
        [--steps 4 6] [--fit-schedule off on] [--scheduler eps=karras flow=simple] > sweep.jsonl
    python tests/comfyui_host/never_worse_sweep.py --markdown sweep.jsonl
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

from comfyui_host.harness import ComfyServer  # noqa: E402

DISTILL = "DODEDistillGuider"
POSITIVE, NEGATIVE = 2.0, 0.0
SIZE = 64  # pixels: EmptyLatentImage 64x64 is a 4x8x8 latent
CLAIM_TOLERANCE = 0.10
FAR = 1.0  # per-latent RMSE to the reference beyond which a latent ended in another mixture component
SERVER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # the machine is shared
# each prompt computes every node afresh: a uni_pc run writes into the SIGMAS tensor it gets, and with ComfyUI's
# default cache a BasicScheduler output of one case would reach the next case already written into
SERVER_ARGS = ["--cache-none"]


@dataclass(frozen=True)
class Case:
    """One workflow of the sweep."""

    model: str
    scheduler: str
    sampler: str
    cfg: float
    steps: int
    fit_schedule: bool


@dataclass
class Settings:
    """What every case shares: the fit and the measurement."""

    history: str = "1"
    teacher_factor: int = 10
    fit_batch: int = 8
    test_batch: int = 256
    mixture: str = "separated"
    fit_seed: int = 0
    test_seed: int = 1
    mixture_seed: int = 0
    reference_steps: int = 500
    # Karras rho of the reference per model: 7 is converged to ~2e-5 at 500 steps on the eps model; on the flow
    # model rho 7 leaves 5e-4 (too few steps near sigma 1), rho 1 (uniform in sigma) ~5e-5
    reference_rho: dict = field(default_factory=lambda: {"eps": 7.0, "flow": 1.0})
    timeout: float = 900.0


# --- graphs -----------------------------------------------------------------------------------------------------
def model_nodes(case: Case, settings: Settings) -> dict:
    """The GMM model, its CFG guider and the user's schedule."""
    return {
        "model": {"class_type": "DODETestGMMModel",
                  "inputs": {"model_type": case.model, "seed": settings.mixture_seed, "mixture": settings.mixture}},
        "pos": {"class_type": "DODETestConditioning", "inputs": {"value": POSITIVE}},
        "neg": {"class_type": "DODETestConditioning", "inputs": {"value": NEGATIVE}},
        "guider": {"class_type": "CFGGuider", "inputs": {"model": ["model", 0], "positive": ["pos", 0],
                                                         "negative": ["neg", 0], "cfg": case.cfg}},
        "sched": {"class_type": "BasicScheduler", "inputs": {"model": ["model", 0], "scheduler": case.scheduler,
                                                             "steps": case.steps, "denoise": 1.0}},
        "test_noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": settings.test_seed}},
        "test_latent": {"class_type": "EmptyLatentImage",
                        "inputs": {"width": SIZE, "height": SIZE, "batch_size": settings.test_batch}},
    }


def sample_node(sampler_link, sigmas_link, latent_link=("test_latent", 0)) -> dict:
    return {"class_type": "SamplerCustomAdvanced", "inputs": {
        "noise": ["test_noise", 0], "guider": ["guider", 0], "sampler": list(sampler_link),
        "sigmas": list(sigmas_link), "latent_image": list(latent_link)}}


def case_graph(case: Case, settings: Settings, filename: str) -> dict:
    """Distill, then D-ODE on the test noise with the node's sampler and sigmas, then the base sampler on the
    BasicScheduler's sigmas (ordered: the base run waits for the D-ODE run, which waits for the distill)."""
    graph = model_nodes(case, settings)
    graph.update({
        "fit_noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": settings.fit_seed}},
        "fit_latent": {"class_type": "EmptyLatentImage",
                       "inputs": {"width": SIZE, "height": SIZE, "batch_size": settings.fit_batch}},
        "distill": {"class_type": DISTILL, "inputs": {
            "noise": ["fit_noise", 0], "guider": ["guider", 0], "sigmas": ["sched", 0],
            "latent_image": ["fit_latent", 0], "sampler_name": case.sampler, "teacher_sampler": "auto",
            "teacher_factor": settings.teacher_factor, "history": settings.history,
            "fit_schedule": case.fit_schedule, "filename": filename}},
        "user_sigmas": {"class_type": "DODETestSigmas", "inputs": {"sigmas": ["sched", 0]}},
        "dode_sigmas": {"class_type": "DODETestSigmas", "inputs": {"sigmas": ["distill", 1]}},
        "dode": sample_node(("distill", 0), ("distill", 1)),
        "dode_out": {"class_type": "DODETestLatentPacked", "inputs": {"samples": ["dode", 0]}},
        "base_sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": case.sampler}},
        "base_latent": {"class_type": "DODETestLatentAfter",
                        "inputs": {"samples": ["test_latent", 0], "after_latent": ["dode", 0]}},
        "base": sample_node(("base_sampler", 0), ("sched", 0), ("base_latent", 0)),
        "base_out": {"class_type": "DODETestLatentPacked", "inputs": {"samples": ["base", 0]}},
    })
    return graph


def reference_graph(case: Case, settings: Settings, sampler: str = "dpmpp_2m", steps: int | None = None) -> dict:
    """The converged run of the test noise: ``sampler`` on a Karras schedule from the user's first sigma to the
    model's smallest sigma, then 0."""
    graph = model_nodes(case, settings)
    graph.update({
        "ref_sigmas": {"class_type": "DODETestReferenceSigmas", "inputs": {
            "model": ["model", 0], "sigmas": ["sched", 0], "steps": steps or settings.reference_steps,
            "rho": settings.reference_rho.get(case.model, 7.0)}},
        "ref_sampler": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": sampler}},
        "ref": sample_node(("ref_sampler", 0), ("ref_sigmas", 0)),
        "ref_out": {"class_type": "DODETestLatentPacked", "inputs": {"samples": ["ref", 0]}},
        "user_sigmas": {"class_type": "DODETestSigmas", "inputs": {"sigmas": ["sched", 0]}},
    })
    return graph


# --- reading results --------------------------------------------------------------------------------------------
def offered_samplers(server) -> list[str]:
    """The sampler_name options of the distill node, as the running server lists them."""
    spec = server.get(f"/object_info/{DISTILL}")[DISTILL]["input"]["required"]["sampler_name"]
    return list(spec[1]["options"]) if isinstance(spec[1], dict) and "options" in spec[1] else list(spec[0])


def latent_values(entry: dict, node: str):
    """The packed float32 latent a DODETestLatentPacked node reported, as a flat float64 numpy array."""
    import numpy as np

    report = entry["outputs"][node]["latent"][0]
    if not report["finite"]:
        raise ValueError(f"{node}: the latent holds non-finite values")
    return np.frombuffer(base64.b64decode(report["f32"]), dtype="<f4").astype(np.float64)


def rmse(a, b) -> float:
    """Root mean square difference over every value of every latent."""
    return float(math.sqrt(((a - b) ** 2).mean()))


def execution_error(entry: dict) -> dict:
    """The execution_error message of a failed history entry ({} if none)."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return {}


def classify_failure(error: dict, model_calls: int) -> str:
    """no_gain: the distill node raised NoGainError; refused: it raised SamplerRefusedError, or anything before the
    model was called once; error: anything else (also a failure of any other node)."""
    exception_type = error.get("exception_type", "")
    if error.get("node_id") != "distill":
        return "error"
    if exception_type.endswith("NoGainError"):
        return "no_gain"
    if exception_type.endswith("TeacherNotConvergedError"):
        return "not_converged"
    if exception_type.endswith("SamplerRefusedError") or model_calls == 0:
        return "refused"
    return "error"


def lambda_metadata(server, name: str) -> dict:
    """The λ file's safetensors metadata, read-only, from the server's models/dode_lambdas."""
    from safetensors import safe_open

    path = os.path.join(server.base, "models", "dode_lambdas", name)
    with safe_open(path, framework="pt") as handle:
        return dict(handle.metadata() or {})


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return int(value) if value.is_integer() and "." not in str(text) and "e" not in str(text).lower() else value


def claim_fields(metadata: dict) -> dict:
    """What the file claims: its held-out ratio, every heldout_* and teacher_error* field, the model calls of the
    fit (``model_calls``, else teacher + student + proof calls), its λ scale and history per call."""
    fields = {key: _number(value) for key, value in sorted(metadata.items())
              if key.startswith("heldout_") or key.startswith("teacher_error")}
    base, dode = _float(metadata.get("heldout_rmse_base")), _float(metadata.get("heldout_rmse_dode"))
    fields["claim_ratio"] = dode / base if base and dode is not None else None
    if "model_calls" in metadata:
        fields["fit_model_calls"] = _number(metadata["model_calls"])
    else:
        parts = [_float(metadata.get(key)) for key in ("teacher_calls", "calls", "proof_calls")]
        fields["fit_model_calls"] = int(sum(parts)) if None not in parts else None
    for key in ("calls", "lambda_scale", "history_per_call", "schedule_source"):
        if key in metadata:
            fields[key] = _number(metadata[key]) if key != "history_per_call" else metadata[key]
    return fields


def _float(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def per_latent_rmse(values, reference, count: int):
    """RMSE to the reference of each of the ``count`` latents."""
    import numpy as np

    return np.sqrt(((values - reference) ** 2).reshape(count, -1).mean(1))


T_95 = 1.645  # one-sided 95% normal quantile: the test batch has hundreds of latents


def compare(base, dode, reference, count: int) -> dict:
    """Measured RMSE of base and D-ODE to the reference over all ``count`` latents and their ratio, with its standard
    error (delta method over the latents) and whether D-ODE is worse beyond chance (paired one-sided test at 95% on
    the per-latent squared errors: the RMSE's own terms); plus, per latent, the median RMSE and how many latents end
    far from the reference (RMSE > FAR: in another mixture component; one in the reference's component ends well
    within the component std)."""
    import numpy as np

    measured_base, measured_dode = rmse(base, reference), rmse(dode, reference)
    latent_base, latent_dode = per_latent_rmse(base, reference, count), per_latent_rmse(dode, reference, count)
    square_base, square_dode = latent_base ** 2, latent_dode ** 2
    ratio = measured_dode / measured_base if measured_base > 0 else None
    difference = square_dode - square_base
    worse_beyond_chance = bool(difference.mean() > T_95 * difference.std(ddof=1) / math.sqrt(count))
    ratio_se = (float((square_dode - ratio ** 2 * square_base).std(ddof=1)) /
                (math.sqrt(count) * float(square_base.mean()) * 2 * ratio)) if ratio else None
    typical = float(np.median(latent_dode / np.maximum(latent_base, 1e-300)))
    return {"measured_base": measured_base, "measured_dode": measured_dode, "measured_ratio": ratio,
            "measured_typical_ratio": typical,
            "measured_ratio_se": ratio_se, "worse_beyond_chance": worse_beyond_chance,
            "median_latent_base": float(np.median(latent_base)), "median_latent_dode": float(np.median(latent_dode)),
            "far_latents_base": int((latent_base > FAR).sum()), "far_latents_dode": int((latent_dode > FAR).sum())}


def short_type(exception_type: str) -> str:
    """``/tmp/x/custom_nodes/dode.dode_core.fit.NoGainError`` -> ``dode_core.fit.NoGainError`` (ComfyUI names a
    pack's modules after its path)."""
    name = (exception_type or "").rsplit("/", 1)[-1]
    return name.split(".", 1)[1] if name.startswith("dode.") else name


def claim_error(claim_ratio, measured_ratio):
    """claim / measured - 1: negative when the file promises more gain than measured on fresh seeds."""
    if claim_ratio is None or not measured_ratio:
        return None
    return claim_ratio / measured_ratio - 1.0


# --- running ----------------------------------------------------------------------------------------------------
def model_calls(server) -> int:
    """apply_model calls of the Gaussian-mixture models so far (the test pack's counter)."""
    return int(server.get("/dode_test/gmm_calls")["apply_model"])


class References:
    """Converged runs of the test noise, one per (model, cfg, first sigma of the user's schedule)."""

    def __init__(self, server, settings: Settings):
        self.server, self.settings, self.cache = server, settings, {}

    def get(self, case: Case, first_sigma: float):
        key = (case.model, case.cfg, round(first_sigma, 6), self.settings.mixture)
        if key not in self.cache:
            entry = self.server.run(reference_graph(case, self.settings), timeout=self.settings.timeout)
            if entry["status"]["status_str"] != "success":
                raise RuntimeError(f"reference run failed: {execution_error(entry)}")
            self.cache[key] = latent_values(entry, "ref_out")
        return self.cache[key]


def run_case(server, case: Case, settings: Settings, references: References, index: int = 0) -> dict:
    """Post one case, classify its outcome and, for a delivered fit, measure it against the reference."""
    started = time.perf_counter()
    row = {**asdict(case), "history": settings.history}
    filename = f"nw{index:04d}_{case.model}_{case.sampler}_{case.steps}_cfg{case.cfg:g}_fs{int(case.fit_schedule)}"
    calls_before = model_calls(server)
    try:
        entry = server.run(case_graph(case, settings, filename), timeout=settings.timeout)
    except (AssertionError, TimeoutError, RuntimeError) as failure:  # refused graph, hung prompt
        server.request("/interrupt", {})
        row.update(status="error", message=str(failure)[:2000], seconds=round(time.perf_counter() - started, 2))
        return row
    if entry["status"]["status_str"] != "success":
        error = execution_error(entry)
        calls = model_calls(server) - calls_before
        row.update(status=classify_failure(error, calls), failed_node=error.get("node_type"),
                   exception_type=short_type(error.get("exception_type")),
                   message=(error.get("exception_message") or "").strip()[:2000], model_calls_before_error=calls)
        row["seconds"] = round(time.perf_counter() - started, 2)
        return row
    name = entry["outputs"]["distill"]["lambda_file"][0]
    user_sigmas = entry["outputs"]["user_sigmas"]["sigmas"]
    dode_sigmas = entry["outputs"]["dode_sigmas"]["sigmas"]
    metadata = lambda_metadata(server, name)
    row.update(status="delivered", lambda_file=name, **claim_fields(metadata))
    row["user_sigmas"], row["dode_sigmas"] = user_sigmas, dode_sigmas
    try:
        base, dode = latent_values(entry, "base_out"), latent_values(entry, "dode_out")
    except ValueError as failure:  # a non-finite result: the fit was delivered but sampling with it broke
        row.update(status="error", message=str(failure), seconds=round(time.perf_counter() - started, 2))
        return row
    row.update(compare(base, dode, references.get(case, user_sigmas[0]), settings.test_batch))
    row["claim_error"] = claim_error(row.get("claim_ratio"), row.get("measured_ratio"))
    row["typical_claim_error"] = claim_error(row.get("heldout_typical_ratio"), row.get("measured_typical_ratio"))
    row["seconds"] = round(time.perf_counter() - started, 2)
    return row


def iter_cases(models, schedulers: dict, samplers, cfgs, steps, fit_schedules):
    """Every combination, model-major (references are reused within a model and cfg)."""
    for model in models:
        for sampler in samplers:
            for cfg in cfgs:
                for step_count in steps:
                    for fit_schedule in fit_schedules:
                        yield Case(model, schedulers[model], sampler, float(cfg), int(step_count), fit_schedule)


def run_sweep(server, cases, settings: Settings, out=None):
    """Run ``cases`` on ``server``; yields one row per case (and writes it as a JSON line to ``out``)."""
    references = References(server, settings)
    for index, case in enumerate(cases):
        row = run_case(server, case, settings, references, index)
        if out is not None:
            print(json.dumps(row), file=out, flush=True)
        yield row


# --- summary ----------------------------------------------------------------------------------------------------
STATUSES = ("delivered", "no_gain", "not_converged", "refused", "error")


def is_worse(row) -> bool:
    return row.get("status") == "delivered" and row.get("measured_dode", 0) > row.get("measured_base", math.inf)


def claim_ok(row) -> bool:
    return row.get("claim_error") is not None and abs(row["claim_error"]) <= CLAIM_TOLERANCE


def typical_claim_ok(row) -> bool:
    """The file's typical-latent ratio is within CLAIM_TOLERANCE of the median per-latent ratio on fresh seeds."""
    return row.get("typical_claim_error") is not None and abs(row["typical_claim_error"]) <= CLAIM_TOLERANCE


def claim_within_noise(row) -> bool:
    """The claim is within two standard errors of the measured ratio (the claim's own, from the fit batch, and the
    measurement's, from the test batch, combined)."""
    claim, measured = row.get("claim_ratio"), row.get("measured_ratio")
    if claim is None or not measured:
        return False
    spread = math.hypot(float(row.get("heldout_ratio_se") or 0.0), float(row.get("measured_ratio_se") or 0.0))
    return abs(claim - measured) <= 2 * spread


def tally(rows) -> dict:
    """Counts per status, worse fits, worst measured ratio and claims within 10% of what was measured."""
    delivered = [r for r in rows if r.get("status") == "delivered"]
    ratios = [r["measured_ratio"] for r in delivered if r.get("measured_ratio") is not None]
    counts = {status: sum(1 for r in rows if r.get("status") == status) for status in STATUSES}
    return {"cases": len(rows), **counts, "worse": sum(1 for r in rows if is_worse(r)),
            "worse_beyond_chance": sum(1 for r in delivered if r.get("worse_beyond_chance")),
            "claims_in_noise": sum(1 for r in delivered if claim_within_noise(r)),
            "typical_ok": sum(1 for r in delivered if typical_claim_ok(r)),
            "worst_ratio": max(ratios) if ratios else None,
            "median_ratio": sorted(ratios)[len(ratios) // 2] if ratios else None,
            "claims_ok": sum(1 for r in delivered if claim_ok(r)),
            "far_base": sum(r.get("far_latents_base", 0) for r in delivered),
            "far_dode": sum(r.get("far_latents_dode", 0) for r in delivered)}


def _fmt(value, spec=".3f"):
    return "-" if value is None else format(value, spec)


def _short(message: str) -> str:
    first = (message or "").strip().splitlines()[0] if (message or "").strip() else ""
    return first[:90].replace("|", "/")


def markdown(rows) -> str:
    """Per model and in total, then per sampler: counts, worse fits, worst and median measured ratio, claims within
    10%, and (over delivered cases) how many test latents ended far from the reference, base vs D-ODE."""
    header = ("| {} | cases | delivered | no_gain | not_converged | refused | error | worse | worse beyond chance "
              "| worst ratio | median ratio | claims within 10% | claims within 2 SE | typical claims within 10% "
              "| far latents base -> D-ODE |")
    line = "| --- |" + " ---: |" * 14

    def cells(t):
        return (f"{t['cases']} | {t['delivered']} | {t['no_gain']} | {t['not_converged']} | {t['refused']} | "
                f"{t['error']} | {t['worse']} | {t['worse_beyond_chance']} | {_fmt(t['worst_ratio'])} | "
                f"{_fmt(t['median_ratio'])} | {t['claims_ok']}/{t['delivered']} | "
                f"{t['claims_in_noise']}/{t['delivered']} | {t['typical_ok']}/{t['delivered']} | "
                f"{t['far_base']} -> {t['far_dode']} |")

    out = [header.format("model"), line]
    for model in dict.fromkeys(r["model"] for r in rows):
        out.append(f"| {model} | " + cells(tally([r for r in rows if r["model"] == model])))
    out.append("| **total** | " + cells(tally(rows)))
    out += ["", header.format("sampler") + " notes |", line + " --- |"]
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        mine = [r for r in rows if r["sampler"] == sampler]
        notes = sorted({f"{r['status']}: {_short(r.get('message', ''))}" for r in mine
                        if r.get("status") in ("refused", "error")})
        out.append(f"| {sampler} | " + cells(tally(mine)) + " " + "; ".join(notes)[:300] + " |")
    return "\n".join(out)


# --- command line -----------------------------------------------------------------------------------------------
def parse_pairs(pairs, cast=str) -> dict:
    """["eps=karras", "flow=simple"] -> {"eps": "karras", "flow": "simple"}."""
    result = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        result[key] = cast(value)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["eps", "flow"], choices=["eps", "flow"])
    parser.add_argument("--samplers", nargs="+", help="a subset of what the distill node offers (default: all)")
    parser.add_argument("--cfgs", nargs="+", type=float, default=[1.0, 3.0, 7.0])
    parser.add_argument("--steps", nargs="+", type=int, default=[4, 6])
    parser.add_argument("--fit-schedule", nargs="+", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--scheduler", nargs="+", default=["eps=karras", "flow=simple"], metavar="MODEL=NAME")
    parser.add_argument("--history", default="1", choices=["1", "2", "3", "auto"])
    parser.add_argument("--teacher-factor", type=int, default=10)
    parser.add_argument("--fit-batch", type=int, default=8)
    parser.add_argument("--test-batch", type=int, default=256)
    parser.add_argument("--mixture", default="separated", choices=["separated", "overlapping"],
                        help="the Gaussian mixture (tests/comfyui_host/dode_test_pack/gmm.py MIXTURES)")
    parser.add_argument("--fit-seed", type=int, default=0)
    parser.add_argument("--test-seed", type=int, default=1)
    parser.add_argument("--reference-steps", type=int, default=500)
    parser.add_argument("--reference-rho", nargs="+", default=["eps=7", "flow=1"], metavar="MODEL=RHO")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one prompt may take")
    parser.add_argument("--keep", action="store_true", help="keep the server's base directory (λ files, log)")
    parser.add_argument("--markdown", metavar="JSONL", help="print the summary of an earlier run and exit")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.markdown:
        with open(args.markdown) as handle:
            print(markdown([json.loads(line) for line in handle if line.startswith("{")]))
        return
    settings = Settings(history=args.history, teacher_factor=args.teacher_factor, fit_batch=args.fit_batch,
                        test_batch=args.test_batch, mixture=args.mixture, fit_seed=args.fit_seed,
                        test_seed=args.test_seed,
                        reference_steps=args.reference_steps,
                        reference_rho={**Settings().reference_rho, **parse_pairs(args.reference_rho, float)})
    schedulers = {"eps": "karras", "flow": "simple", **parse_pairs(args.scheduler)}
    base = tempfile.mkdtemp(prefix="dode_never_worse_")
    server = ComfyServer(base, env=SERVER_ENV, extra_args=SERVER_ARGS)
    started = time.perf_counter()
    try:
        offered = offered_samplers(server)
        unknown = [s for s in args.samplers or [] if s not in offered]
        if unknown:
            raise SystemExit(f"not offered by {DISTILL}: {unknown}; offered: {offered}")
        samplers = [s for s in offered if not args.samplers or s in args.samplers]
        print(f"samplers offered: {offered}", file=sys.stderr)
        cases = list(iter_cases(args.models, schedulers, samplers, args.cfgs, args.steps,
                                [value == "on" for value in args.fit_schedule]))
        for i, row in enumerate(run_sweep(server, cases, settings, out=sys.stdout), 1):
            print(f"[{i}/{len(cases)} {time.perf_counter() - started:.0f}s] {row['model']} {row['sampler']} "
                  f"cfg {row['cfg']:g} {row['steps']} steps fs={row['fit_schedule']}: {row['status']} "
                  f"{_fmt(row.get('measured_ratio'))} (claim {_fmt(row.get('claim_ratio'))})", file=sys.stderr)
        print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)
    finally:
        server.stop()
        if args.keep:
            print(f"kept {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
