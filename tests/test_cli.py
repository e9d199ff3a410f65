"""The main job (``python -m dode_demo``, ``bash run.sh demo``) end to end at a small size, and ``inspect`` on good and
bad files."""

import glob
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from PIL import Image

from dode_core import distill, load_lambdas
from dode_demo.cli import main

SHIPPED = sorted(glob.glob(os.path.join(ROOT, "dode_demo", "lambdas", "*.safetensors")))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report"))
    assert main(["--samplers", "euler,dpmpp_2m", "--nfe", "6", "--batch", "16", "--eval-batch", "32",
                 "--teacher-factor", "4", "--out", out]) == 0
    return out


def table_rows(markdown: str):
    """(sampler, schedule, calls, rmse_base, rmse_dode, fd_base, fd_dode) per table row."""
    rows = []
    for line in markdown.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 9 and re.fullmatch(r"\d+", cells[3]):
            rows.append((cells[0], cells[1], int(cells[3]), *map(float, (cells[4], cells[5], cells[7], cells[8]))))
    return rows


def test_the_demo_writes_a_complete_report(report, capsys):
    for name, minimum_size in (("grid.png", (300, 60)), ("lambdas.png", (400, 300))):
        with Image.open(os.path.join(report, name)) as image:
            image.verify()
        with Image.open(os.path.join(report, name)) as image:
            assert image.format == "PNG" and image.size >= minimum_size
    markdown = open(os.path.join(report, "report.md"), encoding="utf-8").read()
    assert "| sampler | schedule | steps | model calls | RMSE base | RMSE D-ODE |" in markdown
    assert [row[:3] for row in table_rows(markdown)] == [("euler", "karras", 6), ("euler", "fitted", 6),
                                                         ("dpmpp_2m", "karras", 6), ("dpmpp_2m", "fitted", 6)]
    assert re.search(r"- euler, 6 calls: 80, [\d., ]+, 0\n", markdown), "the fitted sigmas are listed"
    files = sorted(glob.glob(os.path.join(report, "lambdas", "*.safetensors")))
    assert [os.path.basename(f) for f in files] == ["demo-digits16_dpmpp_2m_6steps_fitted_hauto.safetensors",
                                                    "demo-digits16_dpmpp_2m_6steps_karras_hauto.safetensors",
                                                    "demo-digits16_euler_6steps_fitted_hauto.safetensors",
                                                    "demo-digits16_euler_6steps_karras_hauto.safetensors"]
    for path in files:
        lam = load_lambdas(path)
        assert lam.metadata["model"] == "dode demo digits16" and len(lam.metadata["checkpoint_sha256"]) == 64
        assert lam.metadata["checkpoint_name"] == "digits16.safetensors"
        assert lam.schedule_fitted == ("fitted" in os.path.basename(path))


def test_dode_rows_beat_the_base_rows(report):
    """Every row's base is the base sampler on the user's Karras schedule: D-ODE beats it, on its own schedule."""
    rows = table_rows(open(os.path.join(report, "report.md"), encoding="utf-8").read())
    for sampler, schedule, calls, rmse_base, rmse_dode, fd_base, fd_dode in rows:
        assert rmse_dode < 0.9 * rmse_base, (sampler, schedule, calls, rmse_base, rmse_dode)
        assert fd_dode < fd_base, (sampler, schedule, calls, fd_base, fd_dode)


def test_a_fitted_schedule_beats_karras_at_the_same_calls(report):
    """The schedule is chosen for the RMSE to the teacher: measured (batch 16, teacher factor 4, 6 calls) D-ODE RMSE
    0.119 -> 0.066 (euler), 0.114 -> 0.072 (dpmpp_2m). The FD of the two D-ODE rows is within the noise of 32
    samples (5.0 vs 5.2), so it is held to the base's, in the test above, not to the other D-ODE row's."""
    rows = {(row[0], row[1]): row for row in table_rows(open(os.path.join(report, "report.md"),
                                                              encoding="utf-8").read())}
    for sampler in ("euler", "dpmpp_2m"):
        karras, fitted = rows[(sampler, "karras")], rows[(sampler, "fitted")]
        assert karras[3] == fitted[3], "both rows measure against the same base run"
        assert fitted[4] < 0.8 * karras[4], (sampler, karras[4], fitted[4])


@pytest.mark.parametrize("flags, message", [
    (["--nfe", "4,x"], "argument --nfe: expected comma-separated integers, got '4,x'"),
    (["--nfe", "1"], "argument --nfe: expected model-call budgets from 2 to 100"),
    (["--samplers", "euler_ancestral"], "unknown sampler(s) euler_ancestral; choose from dpm_2, dpmpp_2m, euler, "
                                        "heun, lms (the deterministic samplers of k-diffusion, read at run time)"),
    (["--history", "9"], "argument --history: expected one of 1, 2, 3, auto, got '9'"),
    (["--batch", "3"], "argument --batch: expected an integer >= 4, got 3"),
    (["--teacher-factor", "1"], "argument --teacher-factor: expected an integer >= 2, got 1"),
])
def test_bad_flags_give_a_usage_error_not_a_traceback(capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "usage: python -m dode_demo" in error and message in error and "Traceback" not in error


def run_inspect(*paths):
    return subprocess.run([sys.executable, "-m", "dode_core", "inspect", *paths], capture_output=True, text=True,
                          cwd=ROOT)


def test_every_shipped_lambda_file_is_valid():
    assert SHIPPED, "dode_demo/lambdas/ holds the demo model's λ files"
    result = run_inspect(*SHIPPED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("VALID ") == len(SHIPPED)
    assert "call  1  sigma" in result.stdout and "schedule: [80," in result.stdout
    # every shipped file carries the held-out proof of its fit, and it shows a gain
    assert result.stdout.count("  proof on ") == len(SHIPPED)
    for lam in map(load_lambdas, SHIPPED):
        base, dode, count = lam.heldout()
        batch = int(lam.metadata["batch_size"])  # a fitted schedule proves on the half the search did not use
        assert dode < base and count == (batch - batch // 2 if lam.schedule_fitted else batch)


def test_inspect_rejects_a_corrupted_copy_with_the_reason(tmp_path):
    corrupted = tmp_path / "corrupted.safetensors"
    shutil.copy(SHIPPED[0], corrupted)
    data = bytearray(corrupted.read_bytes())
    corrupted.write_bytes(bytes(data[: len(data) // 2]))
    result = run_inspect(SHIPPED[0], str(corrupted))
    assert result.returncode == 1
    assert f"VALID {SHIPPED[0]}" in result.stdout
    assert f"INVALID {corrupted}: not a readable safetensors file" in result.stdout
    assert "Traceback" not in result.stderr


def test_inspect_prints_the_held_out_proof_a_fit_recorded(tmp_path, K, karras):
    from models import GaussianDenoiser

    x = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    lam = distill(GaussianDenoiser(), x, karras(4), K.sample_euler, teacher_factor=4)
    base, dode, count = lam.heldout()
    assert count == 8 and dode < base
    path = lam.save(tmp_path / "euler.safetensors")
    result = run_inspect(path)
    assert result.returncode == 0, result.stderr
    assert (f"proof on 8 latents, each judged with λ fitted on the others: final-state RMSE to the teacher, base "
            f"sampler on your schedule {base:.4g} -> D-ODE {dode:.4g} ({dode / base:.2f}x ±") in result.stdout
    assert "teacher: dpmpp_2m_teacher x4, estimated error" in result.stdout
