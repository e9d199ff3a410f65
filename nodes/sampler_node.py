"""The D-ODE Sampler node (a λ file -> SAMPLER + the file's SIGMAS) and the sampler function every D-ODE SAMPLER runs,
the distill nodes' output included.

Which file a run uses is dode_core's rule for both hosts (dode_core.file_rules): a named file on the run's sigmas
where its model calls match them, else on its own schedule where that may stand in (the same schedule from another
host, or a fitted schedule); "auto" the newest file that fits, chosen at sampling time.
"""

from __future__ import annotations

import logging
import os

import comfy.samplers
import torch
from comfy_api.v0_0_2 import io

from . import errors, identity, samplers
from ._core import dode_core
from .common import CATEGORY, OUT_TIPS, describe_lines, preview_text
from .folder import full_path, listing_state, ordered_files

log = logging.getLogger(__name__)
AUTO_FILE = "auto (newest matching)"


class FileForRun:
    """The λ file a sampling run uses (dode_core's FileChoice), its name in the folder and ComfyUI's sampler for it."""

    def __init__(self, name: str, choice, host, auto: bool):
        self.name, self.choice, self.host, self.auto = name, choice, host, auto
        self.lam = choice.lam

    def lines(self) -> list[str]:
        """Two short lines for the node (its text area shows about three)."""
        shown = self.name.replace("<", "‹").replace(">", "›")  # the frontend shows this text as HTML
        host_name = self.lam.metadata.get("comfy_sampler") or self.lam.base_sampler
        if self.choice.schedule is not None:
            how = f"sampled on the {self.choice.note}"
        else:
            how = f"its {self.lam.calls} model calls are at this run's sigmas"
        newest = "the only match" if self.choice.matching == 1 else f"newest of {self.choice.matching} matching"
        return [f"auto used: {shown}", f"({host_name}: {how}; {newest})"]


def file_host_sampler(name: str, lam):
    """ComfyUI's sampler for a file: its ``comfy_sampler`` (ComfyUI files) or ``base_sampler`` name."""
    for candidate in (lam.metadata.get("comfy_sampler"), lam.base_sampler):
        if candidate and samplers.refusal(candidate) is None:
            return samplers.host_sampler(candidate)
    raise errors.LambdaFileError(
        f"{f'λ file {name!r}' if name else 'it'} is for the sampler '{lam.base_sampler}', which D-ODE cannot use in "
        "this ComfyUI: pick another file, or distill for one of the listed samplers.",
        f"supported here: {', '.join(samplers.supported_samplers())}")


def auto_file(model, x, sigmas, extra_args) -> FileForRun:
    """What "auto" means at sampling time (dode_core.choose_file): the newest file whose base sampler calls the
    model at the sigmas it was fitted for, or whose own schedule may stand in; files for other latents pass."""
    names = {path: name for name, path in ordered_files()}

    def run_calls(lam):  # the run's model calls with the file's own sampler
        host = file_host_sampler("", lam)
        return dode_core.cached_call_sigmas(model, x, sigmas, host.sampler_function, extra_args=extra_args,
                                            options=dict(host.extra_options or {}))

    try:
        choice = dode_core.choose_file(list(names), run_calls, sigmas.tolist(), latent_shape=tuple(x.shape))
    except dode_core.ScheduleMismatchError as error:
        steps = len(sigmas) - 1
        raise errors.ScheduleMismatchError(
            f"No λ file fits this run ({steps} steps): distill one for this schedule with 'Distill λ (D-ODE)', or pick "
            "a file in the D-ODE Sampler and sample with its sigmas output.", errors.capped(str(error))) from error
    name = names[choice.path]
    return FileForRun(name, choice, file_host_sampler(name, choice.lam), auto=True)


def named_file(name: str, lam, host, model, x, sigmas, extra_args, options) -> FileForRun:
    """A chosen file for this run (dode_core.use_file), or the reason it cannot serve it."""
    call_sigmas = dode_core.cached_call_sigmas(model, x, sigmas, host.sampler_function, extra_args=extra_args,
                                               options=options)
    try:
        choice = dode_core.use_file(name, lam, sigmas.tolist(), call_sigmas, tuple(x.shape))
    except dode_core.ScheduleMismatchError as error:
        raise errors.schedule_mismatch(error, name) from error
    except dode_core.LambdaFileError as error:
        raise errors.for_file(error, name) from error
    return FileForRun(name, choice, host, auto=False)


def dode_sampler(host, lam, name: str, node_id=None):
    """A KSAMPLER running ComfyUI's own sampler ``host`` with ``lam`` (the file ``name``). With ``lam`` None ("auto")
    the file, and with it the base sampler, is picked at sampling time, and what was picked and why is shown on node
    ``node_id`` (the D-ODE Sampler) and written to the log."""

    def sample_dode(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        if lam is None:
            found = auto_file(model, x, sigmas, extra_args)
            options = {**dict(found.host.extra_options or {}), **options}
        else:
            found = named_file(name, lam, host, model, x, sigmas, extra_args, options)
        warnings = identity.mismatch_warnings(found.lam, getattr(model, "inner_model", None))
        for warning in warnings:
            log.warning("D-ODE Sampler: %s: %s", found.name, warning.lstrip("! "))
        run_sigmas = sigmas
        if found.choice.schedule is not None:
            run_sigmas = found.choice.schedule.to(device=sigmas.device, dtype=sigmas.dtype)
            log.info("D-ODE Sampler: %s: sampling on the %s", found.name, found.choice.note)
        if found.auto:
            log.info("D-ODE Sampler (auto): using %s: its base sampler '%s' fits this run's %d sigmas %s (%s)",
                     found.name, found.lam.metadata.get("comfy_sampler") or found.lam.base_sampler, len(sigmas),
                     dode_core.text.format_sigmas(sigmas.tolist()), found.choice.note or "its own calls")
            show_on_node(node_id, found.lines() + warnings)
        inner = dode_core.make_sampler(found.host.sampler_function, found.lam)
        try:
            return inner(model, x, run_sigmas, extra_args=extra_args, callback=callback, disable=disable, **options)
        except dode_core.ScheduleMismatchError as error:
            raise errors.schedule_mismatch(error, found.name) from error

    sample_dode.__name__ = "sample_dode_" + (lam.base_sampler if lam is not None else "auto")
    if lam is None:
        return comfy.samplers.KSAMPLER(sample_dode)
    return comfy.samplers.KSAMPLER(sample_dode, extra_options=dict(host.extra_options or {}),
                                   inpaint_options=dict(host.inpaint_options or {}))


def show_on_node(node_id, lines) -> None:
    """Text under the node's widgets (ComfyUI's progress text), sent while the workflow runs: frontend 1.32.9 keeps
    it after the run, 1.58.1 clears it when the run ends (the log keeps it in both)."""
    if node_id is None:
        return
    try:
        from server import PromptServer

        server = PromptServer.instance
        server.send_progress_text(preview_text(lines), str(node_id), getattr(server, "client_id", None))
    except Exception as error:  # no server (an in-process run) or an older one: the log has it  # noqa: BLE001
        log.debug("D-ODE Sampler: could not show the choice on node %s: %s", node_id, error)


def _usable_files():
    """``(name, lam)`` of every file that loads and has a sampler here, newest first; entries for an error listing."""
    usable, listed = [], []
    for name, path in ordered_files():
        try:
            lam = dode_core.load_lambdas(path)
            file_host_sampler(name, lam)
        except Exception as error:  # one bad file must not break "auto"  # noqa: BLE001
            listed.append((name, f"not usable ({errors.what(error, 100)})"))
            continue
        usable.append((name, lam))
        listed.append((name, lam.describe()))
    return usable, listed


def file_choices() -> list[str]:
    return [AUTO_FILE, *[name for name, _path in ordered_files()]]


class DODESampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DODESampler",
            display_name="D-ODE Sampler",
            category=CATEGORY,
            description="A λ file's base sampler with its D-ODE correction, for SamplerCustom / SamplerCustomAdvanced. "
                        "Use it with the sigmas output (or the scheduler, steps and denoise the file was distilled "
                        "for); another schedule is refused with both schedules shown.",
            inputs=[
                # the id stays "lambdas" (saved workflows); the label fits beside "auto (newest matching)"
                io.Combo.Input("lambdas", display_name="λ file", options=file_choices(), default=AUTO_FILE,
                               tooltip="A λ file from models/dode_lambdas, newest first. 'auto': at sampling time, "
                                       "the newest file whose sampler and schedule match the run, so a file just "
                                       "distilled is used without refreshing this list."),
                io.Guider.Input("guider", optional=True,
                                tooltip="Optional: the guider you sample with, to check the file was fitted for this "
                                        "model and guidance (a warning in info and the log otherwise)."),
            ],
            outputs=[
                io.Sampler.Output("sampler_out", display_name="sampler", tooltip=OUT_TIPS["sampler"]),
                io.Sigmas.Output("sigmas_out", display_name="sigmas",
                                 tooltip="The schedule the file was fitted on ('auto': the newest file's)."),
                io.String.Output("info_out", display_name="info", tooltip=OUT_TIPS["info"]),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.unique_id],
        )

    @classmethod
    def fingerprint_inputs(cls, lambdas, guider=None):
        if lambdas == AUTO_FILE:
            return listing_state()
        path = full_path(lambdas)
        try:
            stat = os.stat(path) if path else None
        except OSError:
            stat = None
        return f"{stat.st_mtime_ns}:{stat.st_size}" if stat else ""

    @classmethod
    def execute(cls, lambdas, guider=None) -> io.NodeOutput:
        if lambdas == AUTO_FILE:
            usable, listed = _usable_files()
            if not usable:
                raise errors.LambdaFileError(
                    "No usable λ file in models/dode_lambdas: distill one with 'Distill λ (D-ODE)' first.",
                    "files there:\n" + "\n".join(errors.listing(listed)))
            name, lam = usable[0]
            sampler = dode_sampler(None, None, AUTO_FILE, node_id=cls.hidden.unique_id)
            lines = [f"lambda file: auto -> {name} (with this node's sigmas output: the newest of {len(usable)} "
                     "usable files)", *describe_lines(name, lam)[1:],
                     "auto picks at sampling time: the newest file whose base sampler calls the model at the run's "
                     f"sigmas (within {dode_core.rules.SIGMA_RTOL:.1%}; a file from another host within "
                     f"{dode_core.rules.HOST_SIGMA_RTOL:.0%}, on its own schedule); the file used is shown on this "
                     "node and in the log."]
        else:
            path = full_path(lambdas)
            if path is None:
                raise errors.LambdaFileError(
                    f"λ file '{lambdas}' is not in models/dode_lambdas (renamed or deleted?): pick another file, "
                    "or refresh the list (R).")
            try:
                lam = dode_core.load_lambdas(path)
            except dode_core.LambdaFileError as error:
                raise errors.for_file(error, lambdas) from error
            name = lambdas
            sampler = dode_sampler(file_host_sampler(name, lam), lam, name)
            lines = describe_lines(name, lam)
        _checkpoint, checkpoint_path = identity.checkpoint_file(cls.hidden.prompt, cls.hidden.unique_id, "guider")
        warnings = identity.mismatch_warnings(lam, guider, checkpoint_path)
        for warning in warnings:
            log.warning("D-ODE Sampler: %s: %s", name, warning.lstrip("! "))
        sigmas = lam.schedule.float() if lam.schedule is not None else torch.tensor(
            [*lam.call_sigmas, 0.0], dtype=torch.float32)
        text = preview_text([*lines, *warnings])
        return io.NodeOutput(sampler, sigmas, text, ui={"text": [text]})
