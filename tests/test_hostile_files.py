"""λ files from strangers (issue 12): every hostile file ends in a LambdaFileError that names the field, special
files are never read without bound or blocked on, one bad entry never breaks "auto", and saves are atomic."""

import errno
import json
import os
import pickle
import stat
import threading
import time

import pytest
import torch
from lambda_bytes import floats, parts, raw_file, valid_lambdas

from dode_core import (
    LambdaFileError,
    Lambdas,
    ScheduleMismatchError,
    choose_file,
    file_format,
    file_read,
    load_lambdas,
    same_sampler,
    saving,
)
from dode_core.text import printable

CALL_SIGMAS = [80.0, 5.0, 0.5]


def write(tmp_path, data: bytes, name="hostile.safetensors"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def with_field(**changes) -> bytes:
    entries, metadata, data = parts()
    for key, value in changes.items():
        if value is None:
            metadata.pop(key)
        else:
            metadata[key] = value
    return raw_file(entries, metadata, data)


def refused(tmp_path, data: bytes) -> str:
    """The loader's message for ``data``, without the path prefix; fails the test on any other outcome."""
    path = write(tmp_path, data)
    with pytest.raises(LambdaFileError) as error:
        load_lambdas(path)
    message = str(error.value)
    assert message.startswith(f"{path}: "), message
    return message[len(f"{path}: "):]


def says(message: str, *facts: str) -> None:
    """The message names every one of ``facts`` (the field, the values, the bound): not its wording."""
    missing = [fact for fact in facts if fact not in message]
    assert not missing, f"{missing} not in {message!r}"


def test_the_valid_reference_file_loads(tmp_path):
    lam = load_lambdas(write(tmp_path, raw_file(*parts())))
    assert lam.call_sigmas == (80.0, 5.0, 0.5) and lam.schedule_fitted and lam.metadata["heldout_count"] == "2"
    per_channel = load_lambdas(write(tmp_path, raw_file(*parts(valid_lambdas(channels=4))), "c.safetensors"))
    assert per_channel.lambdas.shape == (3, 2, 4)


@pytest.mark.parametrize("dtype", ["F4", "F6_E2M3", "F6_E3M2", "F8_E8M0", "F8_E4M3", "C64", "X"])
def test_a_dtype_safetensors_parses_but_torch_lacks_is_named(tmp_path, dtype):
    entries, metadata, data = parts()
    entries["lambdas"]["dtype"] = dtype
    says(refused(tmp_path, raw_file(entries, metadata, data)), "'lambdas'", f"'{dtype}'", "torch.float32")


def test_an_extra_tensor_of_an_unknown_dtype_is_named(tmp_path):
    entries, metadata, data = parts()
    entries["payload"] = {"dtype": "F4", "shape": [2], "data_offsets": [len(data), len(data) + 1]}
    says(refused(tmp_path, raw_file(entries, metadata, data + b"\0")), "['lambdas', 'payload']", "['lambdas']")


def test_a_400_digit_integer_in_a_list_is_refused_not_an_overflow(tmp_path):
    huge = "1" + "0" * 400
    message = refused(tmp_path, with_field(call_sigmas=f"[{huge}, 5.0, 0.5]"))
    assert message.startswith("field 'call_sigmas' is '[1000") and message.endswith(
        "; expected a JSON list of finite numbers.")
    assert refused(tmp_path, with_field(seed=huge)).startswith("field 'seed' is '1000")


def test_deeply_nested_json_is_refused_not_a_recursion_error(tmp_path):
    nested = "[" * 30_000 + "]" * 30_000
    assert refused(tmp_path, with_field(fit_rmse_after=nested)).startswith(
        "field 'fit_rmse_after' is '[[[[")
    entries, metadata, data = parts()
    header = json.dumps({**entries, "__metadata__": metadata})
    deep_header = header[:-1] + ', "x": ' + nested + "}"
    assert refused(tmp_path, raw_file(None, None, data, header_text=deep_header)).startswith(
        "safetensors header: not valid JSON")


@pytest.mark.parametrize("text", ["٤", "3\n", " 3", "+3", "3_0", "3.0", ""])
def test_integers_take_ascii_digits_only(tmp_path, text):
    says(refused(tmp_path, with_field(steps=text)), "'steps'", printable(repr(text)), "integer")


def test_oversized_keys_and_values_are_refused(tmp_path):
    assert refused(tmp_path, with_field(**{"k" * 70_000: "v"})).startswith(
        "field name 'kkkk") and "is 70000 bytes long; expected 1 to 256 bytes of UTF-8 text." in refused(
        tmp_path, with_field(**{"k" * 70_000: "v"}))
    says(refused(tmp_path, with_field(prompt="é" * 40_000)), "'prompt'", "80000 bytes", "65536")
    says(refused(tmp_path, with_field(**{f"f{i}": "x" for i in range(300)})), f"{300 + len(parts()[1])} fields", "256")


def test_a_lone_surrogate_is_refused(tmp_path):
    entries, metadata, data = parts()
    header = json.dumps({**entries, "__metadata__": {**metadata, "prompt": "PLACEHOLDER"}})
    header = header.replace("PLACEHOLDER", "\\ud800")
    says(refused(tmp_path, raw_file(None, None, data, header_text=header)), "'prompt'", "lone surrogate")


def test_duplicate_header_keys_are_refused(tmp_path):
    entries, metadata, data = parts()
    header = json.dumps({**entries, "__metadata__": metadata})
    twice = header[:-1] + ', "__metadata__": {"format": "x"}}'
    says(refused(tmp_path, raw_file(None, None, data, header_text=twice)), "'__metadata__'", "twice")


@pytest.mark.parametrize("field, value, facts", [
    ("call_sigmas", "[80.0, 5.0, 6.0]", ("rises from 5 to 6", "entry 2", "non-increasing")),
    ("schedule", "[80.0, 0.5, 5.0, 0.0]", ("rises from 0.5 to 5", "entry 2", "non-increasing")),
    ("call_sigmas", "[80.0, 5.0, -0.5]", ("negative sigma", ">= 0")),
    ("fit_rmse_after", "[1.0, -0.5, 0.1]", ("negative value", ">= 0")),
    ("history_per_call", "[0, 1.5, 2]", ("fraction", "whole numbers")),
    ("correction_limit", "[0.0, -0.5, 0.1]", ("negative value", ">= 0")),
    ("correction_limit", "[0.0, 0.5]", ("2 entries", "one per model call (3)")),
    ("history_per_call", "[0, 1, 3]", ("3 terms", "history, 2")),
    ("call_sigmas", "[80.0, NaN, 0.5]", ("'[80.0, NaN, 0.5]'", "finite numbers")),
    ("base_sampler", "../../euler", ("'../../euler'", "1 to 64")),
    ("base_sampler", "euler\x1b[2J", ("'euler\\x1b[2J'", "1 to 64")),
    ("base_sampler", "e" * 65, ("'" + "e" * 60 + "'...", "1 to 64")),
    ("heldout_rmse_base", "-0.1", ("'-0.1'", ">= 0")),
    ("heldout_rmse_dode", "nan", ("'nan'", ">= 0")),
    ("heldout_rmse_dode", "1e999", ("'1e999'", ">= 0")),
    ("heldout_rmse_dode", "٠.5", ("'٠.5'", ">= 0")),
    ("heldout_count", "0", ("is 0", "at least 1")),
    ("proof_calls", "-3", ("is -3", "at least 1")),
    ("lambda_scale", "-0.5", ("'-0.5'", ">= 0")),
    ("schedule_source", "mine", ("'mine'", "'user', 'fitted'")),
    ("teacher_factor", "0", ("is 0", "at least 1")),
    ("steps", "100001", ("100001", "1 to 100000")),
])
def test_each_field_is_checked(tmp_path, field, value, facts):
    says(refused(tmp_path, with_field(**{field: value})), f"'{field}'", *facts)


@pytest.mark.parametrize("value", [1e30, -2e6, float("inf")])
def test_lambda_beyond_what_a_fit_produces_is_refused(tmp_path, value):
    entries, metadata, _ = parts()
    message = refused(tmp_path, raw_file(entries, metadata, floats([0, 0, value, 0, 0, 0])))
    if value == float("inf"):
        says(message, "'lambdas'", "non-finite")
    else:
        says(message, "'lambdas'", f"|λ| = {abs(value):.4g}", "1e+06")
    edge = load_lambdas(write(tmp_path, raw_file(entries, metadata, floats([0, 0, -1e6, 0, 0, 0])), "edge.safetensors"))
    assert edge.lambdas[1, 0] == -1e6


def test_saving_lambda_beyond_the_bound_is_refused(tmp_path):
    lam = Lambdas(torch.tensor([[0.0], [2e6]]), (1.0, 0.5), {"base_sampler": "euler", "steps": "2"})
    with pytest.raises(LambdaFileError, match=r"lambdas to save: tensor 'lambdas' holds \|λ\| = 2e\+06; expected"):
        lam.save(tmp_path / "x.safetensors")
    assert os.listdir(tmp_path) == []


def test_a_pickle_or_checkpoint_renamed_is_called_what_it_is(tmp_path):
    class Payload:
        pass

    says(refused(tmp_path, pickle.dumps({"lambdas": [1.0, 2.0]}, protocol=4)), "not a safetensors file", "pickle")
    checkpoint = tmp_path / "checkpoint.pt"
    torch.save({"lambdas": torch.zeros(3)}, checkpoint)
    says(refused(tmp_path, checkpoint.read_bytes()), "not a safetensors file", "zip archive", ".pt/.ckpt")
    assert refused(tmp_path, b"\xff" * 64).startswith(
        f"not a safetensors file (its first 8 bytes give a header of {2**64 - 1} bytes")


@pytest.mark.parametrize("header_len", [0x0280, 0x0580, 0x4B50])
def test_a_header_length_that_starts_like_a_pickle_or_zip_is_still_safetensors(tmp_path, header_len):
    # little-endian 0x0280 begins with the bytes of pickle protocol 2 (80 02), 0x4B50 with a zip's "PK"
    entries, metadata, data = parts()
    text = json.dumps({**entries, "__metadata__": metadata})
    text += " " * (header_len - len(text.encode()))
    assert load_lambdas(write(tmp_path, raw_file(None, None, data, header_text=text))).calls == 3


def test_header_and_data_that_disagree_are_refused(tmp_path):
    entries, metadata, data = parts()
    entries["lambdas"]["data_offsets"] = [0, 8]
    says(refused(tmp_path, raw_file(entries, metadata, data)), "data_offsets [0, 8]", "24 bytes")
    entries, metadata, data = parts()
    entries["lambdas"]["shape"] = [3, 2.0]
    says(refused(tmp_path, raw_file(entries, metadata, data)), "shape [3, 2.0]", "(calls, history[, channels])")
    entries["lambdas"]["shape"] = [3, 2, 65]
    says(refused(tmp_path, raw_file(entries, metadata, data)), "65 channels", "1 to 64")


# ---- special files -------------------------------------------------------------------------------------------


def load_within(path, seconds=20.0):
    """load_lambdas in a thread that must finish within ``seconds`` (a FIFO used to block it forever)."""
    outcome = {}

    def run():
        try:
            outcome["value"] = load_lambdas(path)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"load_lambdas({path}) still runs after {seconds} s"
    return outcome


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    outcome = load_within(fifo)
    assert isinstance(outcome.get("error"), LambdaFileError)
    says(str(outcome["error"]), str(fifo), "FIFO", "not a regular file")


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_a_link_to_a_device_is_refused_without_reading(tmp_path):
    link = tmp_path / "zero.safetensors"
    link.symlink_to("/dev/zero")
    outcome = load_within(link)
    assert isinstance(outcome.get("error"), LambdaFileError)
    says(str(outcome["error"]), str(link), "character device", "not a regular file")


def test_a_folder_and_a_dangling_link_are_refused(tmp_path):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    with pytest.raises(LambdaFileError) as error:
        load_lambdas(folder)
    says(str(error.value), str(folder), "a folder", "not a regular file")
    dangling = tmp_path / "dangling.safetensors"
    dangling.symlink_to(tmp_path / "absent.safetensors")
    with pytest.raises(LambdaFileError, match=r"dangling.safetensors: cannot read the λ file \(No such file"):
        load_lambdas(dangling)


def test_a_link_to_a_regular_file_is_fine(tmp_path):
    target = valid_lambdas().save(tmp_path / "target.bin")
    link = tmp_path / "link.safetensors"
    link.symlink_to(target)
    assert load_lambdas(link).call_sigmas == (80.0, 5.0, 0.5)


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(file_read, "MAX_FILE_BYTES", 100)
    path = valid_lambdas().save(tmp_path / "big.safetensors")
    size = os.path.getsize(path)
    with pytest.raises(LambdaFileError, match=f"file is {size} bytes; a λ file is at most 100 bytes"):
        load_lambdas(path)


def test_choose_file_survives_every_kind_of_bad_entry(tmp_path):
    good = valid_lambdas().save(tmp_path / "good.safetensors")
    os.mkfifo(tmp_path / "pipe.safetensors") if hasattr(os, "mkfifo") else None
    (tmp_path / "folder.safetensors").mkdir()
    (tmp_path / "dangling.safetensors").symlink_to(tmp_path / "absent")
    entries, metadata, data = parts()
    entries["lambdas"]["dtype"] = "F4"
    write(tmp_path, raw_file(entries, metadata, data), "f4.safetensors")
    write(tmp_path, with_field(call_sigmas="[" + "1" * 400 + ", 5.0, 0.5]"), "overflow.safetensors")
    bad = sorted(str(p) for p in tmp_path.iterdir() if p.name != "good.safetensors")
    paths = [None, *bad, str(good)]
    assert choose_file(paths, same_sampler("euler", CALL_SIGMAS)).path == str(good)

    def flaky_loader(path):  # a host's cached loader that has a bug of its own
        if path is not None and "overflow" in str(path):
            raise KeyError("cache")
        return load_lambdas(path)

    with pytest.raises(ScheduleMismatchError) as error:
        choose_file([None, *bad], same_sampler("euler", CALL_SIGMAS), load=flaky_loader)
    message = str(error.value)
    assert "  None: not usable (" in message
    assert "  folder.safetensors: not usable (" in message and "is a folder, not a regular file" in message
    assert "  dangling.safetensors: not usable (" in message and "cannot read the λ file" in message
    assert "  f4.safetensors: not usable (" in message and "has dtype 'F4'" in message
    assert "  overflow.safetensors: not usable (KeyError: 'cache')" in message
    if hasattr(os, "mkfifo"):
        assert "  pipe.safetensors: not usable (" in message and "is a FIFO" in message


def test_hostile_names_in_the_listing_are_escaped(tmp_path):
    name = "evil\x1b[2J\nVALID\u202e.safetensors"
    write(tmp_path, b"junk" * 4, name)
    with pytest.raises(ScheduleMismatchError) as error:
        choose_file([str(tmp_path / name)], same_sampler("euler", CALL_SIGMAS))
    assert "  evil\\x1b[2J\\nVALID\\u202e.safetensors: not usable (" in str(error.value)


# ---- saves ---------------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_saved_files_get_the_usual_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        paths = [valid_lambdas().save(tmp_path / "a.safetensors"), valid_lambdas().save_new(tmp_path, "b")]
    finally:
        os.umask(old)
    for path in paths:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask, path


def test_save_new_links_a_complete_file_and_fsyncs_the_folder(tmp_path, monkeypatch):
    events = []
    real_link, real_fsync = os.link, os.fsync

    def link(source, target, **kwargs):
        events.append(("link", os.path.getsize(source), os.path.exists(target)))
        return real_link(source, target, **kwargs)

    def fsync(descriptor):
        events.append(("fsync-folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "fsync-file",))
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "fsync", fsync)
    first = valid_lambdas().save_new(tmp_path, "x")
    size = os.path.getsize(first)
    second = valid_lambdas().save_new(tmp_path, "x")
    assert [os.path.basename(p) for p in (first, second)] == ["x.safetensors", "x_2.safetensors"]
    assert events == [("fsync-file",), ("link", size, False), ("fsync-folder",),
                      ("fsync-file",), ("link", size, True), ("link", size, False), ("fsync-folder",)]
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors", "x_2.safetensors"]


def test_save_new_without_hard_links_still_never_overwrites(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    paths = [valid_lambdas().save_new(tmp_path, "x") for _ in range(3)]
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors", "x_2.safetensors", "x_3.safetensors"]
    assert all(load_lambdas(path).calls == 3 for path in paths)


def test_temp_files_of_killed_saves_are_removed_by_a_later_save_once_stale(tmp_path):
    hour_ago = time.time() - 2 * saving.STALE_TEMP_SECONDS
    names = {
        "killed_old": ".dode-0123456789abcdef.tmp",  # a save killed more than an hour ago
        "older_plugin_old": ".dode-0123abcd-4242-0123abcd.tmp",  # the name an older plugin gave its temp files
        "fresh": ".dode-fedcba9876543210.tmp",  # may be a save that runs right now, in another process
        "not_ours_old": "notes.tmp",
    }
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"partial")
        if key.endswith("_old"):
            os.utime(tmp_path / name, (hour_ago, hour_ago))
    valid_lambdas().save_new(tmp_path, "x")
    kept = {names["fresh"], names["not_ours_old"]}
    assert set(os.listdir(tmp_path)) == kept | {"x.safetensors"}


def test_an_interrupted_save_new_leaves_nothing(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", interrupted)
    with pytest.raises(KeyboardInterrupt):
        valid_lambdas().save_new(tmp_path, "x")
    assert os.listdir(tmp_path) == []


def test_a_real_fit_with_big_lambda_is_within_the_bound_and_saves(K, karras, tmp_path):
    # Heun calls the model twice at each inner sigma; where the two outputs barely differ, λ is large but harmless
    from dode_core import distill
    from models import GaussianDenoiser

    x = torch.randn(8, 2, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    lam = distill(GaussianDenoiser(), x, karras(5), K.sample_heun, teacher_factor=4)
    assert 1e3 < float(lam.lambdas.abs().max()) < file_format.MAX_ABS_LAMBDA
    assert torch.equal(load_lambdas(lam.save_new(tmp_path, "heun")).lambdas, lam.lambdas)
