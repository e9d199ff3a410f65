"""The per-host sampler tables of docs/webui.md, generated from the hosts' own sampler tables as mirrored in the
stand-in (tests/webui_stub/): what scripts/dode_webui.py registers in each host, and why it leaves the rest out.

    python tests/webui_doc.py          rewrite the generated part of docs/webui.md
    python tests/webui_doc.py --check  exit 1 if it differs (tests/test_webui_docs.py does the same)

For every D-ODE entry the base sampler is also checked at every step count from 2 to MAX_STEPS on a Karras schedule
(dode_core.cached_call_sigmas, as a run does before its first model call), so a sampler that adds noise only at
some step counts (A1111's Restart, from 20 on) says where it is refused.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for path in (ROOT, HERE):
    if path not in sys.path:
        sys.path.insert(0, path)

import torch  # noqa: E402

DOC = os.path.join(ROOT, "docs", "webui.md")
BEGIN = "<!-- BEGIN generated sampler tables: python tests/webui_doc.py -->"
END = "<!-- END generated sampler tables -->"
HOSTS = (("A1111 1.10", "A1111", "A1111"), ("Forge (2024 backend)", "Forge", "A1111"),
         ("reForge (sampling backend \"A1111\", its default)", "reForge", "A1111"))
MAX_STEPS = 40


def refused_step_counts(host, spec) -> tuple[list[int], str]:
    """The step counts (2..MAX_STEPS, Karras schedule over SD1.5's range) at which the run's own check refuses the
    base sampler of ``spec``, and what it says it does there."""
    from dode_core import SamplerRefusedError, cached_call_sigmas
    from dode_core.correction import clear_probe_cache
    from dode_webui import PROBE_MODEL
    from dode_webui.messages import refusal_kind

    function = host.script.quiet(host.script.resolve_function(spec.funcname))
    refused, kinds = [], set()
    for steps in range(2, MAX_STEPS + 1):
        sigmas = host.sampling.get_sigmas_karras(steps, 0.0292, 14.6146).double()
        try:
            cached_call_sigmas(PROBE_MODEL, torch.zeros(1, 4, 1, 1), sigmas, function)
        except SamplerRefusedError as error:
            refused.append(steps)
            kinds.add(refusal_kind(str(error)))
    clear_probe_cache()
    return refused, ", ".join(sorted(kinds))


def step_ranges(steps: list[int]) -> str:
    """[20, 21, ..., 40] -> "20-40"; gaps give several ranges."""
    ranges, start = [], None
    for i, n in enumerate(steps):
        start = n if start is None else start
        if i + 1 == len(steps) or steps[i + 1] != n + 1:
            ranges.append(str(start) if start == n else f"{start}-{n}")
            start = None
    return ", ".join(ranges)


@functools.cache
def host_rows(kind: str, backend: str) -> tuple[tuple[str, str, str], ...]:
    """(host sampler, D-ODE entry or "", note) for every row of the host's table, in its order."""
    from webui_host import stand_in_host

    from dode_webui.messages import refusal_kind

    with tempfile.TemporaryDirectory() as folder, stand_in_host(kind, folder, backend=backend) as host:
        offered = {spec.base_label: spec for spec in host.script.OFFERED}
        rows = []
        for label, *_ in host.kdiffusion.samplers_k_diffusion:
            spec = offered.get(label)
            if spec is not None:
                refused, kinds = refused_step_counts(host, spec)
                note = (f"refused at {step_ranges(refused)} steps (checked 2-{MAX_STEPS}): {kinds}" if refused
                        else "")
                rows.append((label, spec.label, note))
            elif label in host.script.REFUSED:
                reason = host.script.REFUSED[label]
                shown = ("not in this host's k-diffusion (the host does not list it either)"
                         if "no such function" in reason else refusal_kind(reason))
                rows.append((label, "", shown))
            else:  # the same function as an entry offered under an earlier label
                rows.append((label, "", "same function as an entry above"))
        return tuple(rows)


def generate() -> str:
    """The generated part of docs/webui.md (between BEGIN and END, markers included)."""
    parts = [BEGIN, ""]
    for title, kind, backend in HOSTS:
        rows = host_rows(kind, backend)
        entries = [entry for _, entry, _ in rows if entry]
        parts += [f"**{title}**: {len(entries)} D-ODE samplers: {', '.join(entries)}.", "",
                  "| host sampler | D-ODE entry | why not, or where refused |", "|---|---|---|"]
        parts += [f"| {label} | {entry or '-'} | {note} |" for label, entry, note in rows]
        parts.append("")
    parts.append(END)
    return "\n".join(parts)


def offered_lists() -> dict[str, list[str]]:
    """The D-ODE entries per host, as generated."""
    return {title: [entry for _, entry, _ in host_rows(kind, backend) if entry] for title, kind, backend in HOSTS}


def with_generated(text: str, generated: str) -> str:
    if BEGIN not in text or END not in text:
        raise ValueError(f"{DOC} lacks the markers {BEGIN!r} ... {END!r}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + generated + tail


def main(argv) -> int:
    with open(DOC, encoding="utf-8") as handle:
        text = handle.read()
    updated = with_generated(text, generate())
    if "--check" in argv:
        if updated != text:
            print(f"{DOC}: the generated sampler tables are out of date; run python tests/webui_doc.py")
            return 1
        return 0
    if updated != text:
        with open(DOC, "w", encoding="utf-8") as handle:
            handle.write(updated)
        print(f"rewrote the generated part of {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
