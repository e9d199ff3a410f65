"""Every sampler ComfyUI lists, distilled on an exact denoiser and checked on fresh noise.

Run inside ComfyUI's tree (``python sampler_sweep.py COMFY_DIR [--calls 4 6 8] [--history 1 2 auto]``); prints one
JSON object per sampler and budget on stdout. The list comes from ``comfy.samplers.KSampler.SAMPLERS`` at run time
and each function from ``comfy.samplers.sampler_object(name).sampler_function`` (never a copied list).

The denoiser is the exact one of a Gaussian kernel density estimate (bandwidth 0.3) of scikit-learn's digits; the
schedule is ComfyUI's own Karras schedule over a latent-diffusion sigma range. For each sampler: the base sampler's
and D-ODE's final-state RMSE to a converged run (400 DPM-Solver++(2M) steps) on 64 fresh latents, or the refusal.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SIGMA_MIN, SIGMA_MAX = 0.0292, 14.61


def host_model_sampling():
    """ComfyUI's own model_sampling object of an SD1.x eps model (discrete schedule, sigma 0.0292 to 14.61)."""
    import comfy.model_sampling

    class ModelSampling(comfy.model_sampling.ModelSamplingDiscrete, comfy.model_sampling.EPS):
        pass

    return ModelSampling()


class HostLike:
    """A denoiser with the attributes ComfyUI's samplers read from the model they are given (KSamplerX0Inpaint ->
    CFGGuider -> BaseModel): ``inner_model.inner_model.model_sampling`` and ``inner_model.model_patcher``."""

    def __init__(self, denoiser, model_sampling):
        from types import SimpleNamespace

        self.denoiser = denoiser
        patcher = SimpleNamespace(get_model_object=lambda name: model_sampling)
        self.inner_model = SimpleNamespace(inner_model=SimpleNamespace(model_sampling=model_sampling),
                                           model_patcher=patcher)

    def __call__(self, x, sigma, **extra_args):
        return self.denoiser(x, sigma)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("comfy_dir")
    parser.add_argument("--calls", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--history", nargs="+", default=["1"])
    parser.add_argument("--samplers", nargs="*", default=None, help="a subset of ComfyUI's list")
    parser.add_argument("--fit-batch", type=int, default=32)
    parser.add_argument("--test-batch", type=int, default=128)
    parser.add_argument("--model", choices=("kde", "demo"), default="kde",
                        help="kde: the exact denoiser of the digits KDE; demo: the embedded learned digits UNet")
    parser.add_argument("--markdown", metavar="JSONL", help="print the table of an earlier run's output and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        with open(args.markdown) as handle:
            print(markdown([json.loads(line) for line in handle if line.startswith("{")]))
        return
    sys.path[:0] = [args.comfy_dir, ROOT, os.path.join(ROOT, "tests")]

    import comfy.cli_args
    import torch

    comfy.cli_args.args.cpu = True  # as `main.py --cpu`: this machine has no GPU
    import comfy.k_diffusion.sampling as comfy_sampling
    import comfy.samplers

    from dode_core import NoGainError, SamplerRefusedError, TeacherNotConvergedError, distill, refusal_reason, sample
    from dode_core.blackbox import probe_call_sigmas
    from dode_core.teacher import sample_dpmpp_2m_teacher
    from models import KDEDenoiser, digits_data

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)  # the demo model is an nn.Module
    if args.model == "demo":
        from dode_demo import load_demo_model
        from dode_demo.model import SIGMA_MAX as sigma_max
        from dode_demo.model import SIGMA_MIN as sigma_min

        denoiser, size = load_demo_model(), 16
    else:
        denoiser, size, sigma_min, sigma_max = KDEDenoiser(digits_data(), bandwidth=0.3), 8, SIGMA_MIN, SIGMA_MAX
    model = HostLike(denoiser, host_model_sampling())
    # float32 latents and sigmas, as ComfyUI passes them (its UniPC cannot take float64)
    fit_noise = torch.randn(args.fit_batch, 1, size, size, generator=torch.Generator().manual_seed(0))
    test_noise = torch.randn(args.test_batch, 1, size, size, generator=torch.Generator().manual_seed(1))
    reference_sigmas = comfy_sampling.get_sigmas_karras(400, sigma_min, sigma_max)
    reference = sample_dpmpp_2m_teacher(model, test_noise * sigma_max, reference_sigmas)

    def rmse(final):
        return float((final - reference).square().mean().sqrt())

    for name in comfy.samplers.KSampler.SAMPLERS:
        if args.samplers and name not in args.samplers:
            continue
        function = comfy.samplers.sampler_object(name).sampler_function
        reason = refusal_reason(function, model=model)
        if reason is not None:
            print(json.dumps({"sampler": name, "refused": reason}), flush=True)
            continue
        for calls in args.calls:
            # the step count whose model calls come closest to `calls` without going over
            steps = max(s for s in range(2, calls + 2) if len(probe_call_sigmas(
                model, fit_noise, comfy_sampling.get_sigmas_karras(s, sigma_min, sigma_max), function)[0])
                <= max(calls, 3))
            sigmas = comfy_sampling.get_sigmas_karras(steps, sigma_min, sigma_max)
            base = rmse(function(model, test_noise * sigma_max, sigmas.clone(), extra_args={}, disable=True))
            for history in args.history:
                row = {"sampler": name, "steps": steps, "history": history, "base": base}
                started = time.perf_counter()
                try:
                    lam = distill(model, fit_noise * sigma_max, sigmas, function, sigma_min=sigma_min,
                                  history=history if history == "auto" else int(history))
                except (SamplerRefusedError, NoGainError, TeacherNotConvergedError) as error:
                    row["refused"] = str(error)
                else:
                    row.update(calls=lam.calls, dode=rmse(sample(model, test_noise * sigma_max, sigmas, function, lam,
                                                                 disable=True)),
                               heldout=lam.heldout(), typical=float(lam.metadata["heldout_typical_ratio"]))
                row["seconds"] = round(time.perf_counter() - started, 2)
                print(json.dumps(row), flush=True)


def markdown(rows) -> str:
    """One line per sampler: RMSE to the converged run, base -> D-ODE (ratio) per budget and history; or why not."""
    budgets = sorted({(row["steps"], row.get("calls", 0)) for row in rows if "steps" in row})
    histories = sorted({row["history"] for row in rows if "history" in row}, key=str)
    lines = ["| sampler | " + " | ".join(f"h={h}" for h in histories) + " |", "| --- |" + " --- |" * len(histories)]
    for name in dict.fromkeys(row["sampler"] for row in rows):
        mine = [row for row in rows if row["sampler"] == name]
        if "steps" not in mine[0]:
            why = mine[0]["refused"].split(";")[0].split(": ", 1)[0].split(" (")[0].split(" on this")[0]
            lines.append(f"| {name} | refused: {why.removeprefix('sampler ')} |" + " |" * (len(histories) - 1))
            continue
        cells = []
        for history in histories:
            parts = []
            for row in (r for r in mine if r["history"] == history):
                calls = row.get("calls") or "?"
                parts.append(f"{calls} calls {row['base']:.3f}->{row['dode']:.3f} ({row['dode'] / row['base']:.2f})"
                             if "dode" in row else f"{row['steps']} steps: no gain, refused")
            cells.append("; ".join(parts))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    del budgets
    return "\n".join(lines)


if __name__ == "__main__":
    main()
