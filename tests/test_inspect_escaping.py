"""``python -m dode_core inspect`` on files from strangers: no control character from a file or a file name reaches
the terminal, so a file cannot rewrite lines or forge a "VALID" verdict (issue 12)."""

import subprocess
import sys
import unicodedata

from conftest import ROOT
from lambda_bytes import parts, raw_file, valid_lambdas

from dode_core.text import printable

FORGED = "VALID /home/you/models/trusted.safetensors"
# C0 (BEL, NUL, CR, LF, ESC + CSI/OSC), DEL, C1 (CSI), bidi override, line separator, zero-width joiner
HOSTILE = f"a cat\r\n{FORGED}\n\x1b]0;owned\x07\x1b[2J\x1b[1A\x00\x7f\x9b31m\u202eelif\u2028\u200d."


def terminal_safe(text: str) -> bool:
    return all(ch == "\n" or ch.isprintable() or unicodedata.category(ch) == "Zs" for ch in text)


def test_printable_escapes_what_a_terminal_acts_on_and_keeps_text():
    assert printable("sd15 λ — ünïcode 猫\u00a0ok") == "sd15 λ — ünïcode 猫\u00a0ok"
    assert printable("a\r\nb\tc\x1b[2J\x9b\x7f\x00\u202e\u2028\ud800") == (
        "a\\r\\nb\\tc\\x1b[2J\\x9b\\x7f\\x00\\u202e\\u2028\\ud800")
    assert printable(printable(HOSTILE)) == printable(HOSTILE)
    assert terminal_safe(printable(HOSTILE)) and not terminal_safe(HOSTILE)


def test_inspect_output_holds_no_control_characters_and_no_forged_verdict(tmp_path):
    forged_name = "VALID trusted.safetensors"  # a file name cannot hold the path separator
    valid = tmp_path / f"shared\n{forged_name}\x1b[2K.safetensors"
    valid_lambdas().save(valid, prompt=HOSTILE, **{f"note\x1b[1A\r{FORGED}": HOSTILE})
    entries, metadata, data = parts()
    metadata["format"] = f"\x1b[32m\n{FORGED}"
    invalid = tmp_path / f"invalid\r{forged_name}.safetensors"
    invalid.write_bytes(raw_file(entries, metadata, data))

    result = subprocess.run([sys.executable, "-m", "dode_core", "inspect", str(valid), str(invalid)],
                            capture_output=True, cwd=ROOT)
    out = result.stdout.decode("utf-8")  # strict: a lone surrogate would not encode
    assert result.returncode == 1, out + result.stderr.decode("utf-8", "replace")
    assert terminal_safe(out), [ch for ch in out if not terminal_safe(ch)]
    verdicts = [line for line in out.splitlines() if line.startswith(("VALID", "INVALID"))]
    assert verdicts == [f"VALID {printable(str(valid))}",
                        f"INVALID {printable(str(invalid))}: field 'format' is "
                        f"'\\x1b[32m\\n{FORGED}'; expected 'dode-lambdas'. This is not a D-ODE λ file."]
    assert f"    prompt: a cat\\r\\n{FORGED}\\n\\x1b]0;owned\\x07\\x1b[2J" in out
    assert f"    note\\x1b[1A\\r{FORGED}: a cat\\r\\n" in out
    assert "Traceback" not in result.stderr.decode("utf-8", "replace")
