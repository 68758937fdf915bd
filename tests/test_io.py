"""The one atomic-write module: a crash never leaves a half-written target or a temporary."""

import json
import os
import stat

import pytest
import torch

import concept_probe as cp
from concept_probe import _io
from concept_probe.errors import CorruptFileError


class Crash(RuntimeError):
    pass


def _names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_file_replaces_the_target_only_when_the_write_completes(tmp_path):
    target = tmp_path / "data.bin"
    target.write_bytes(b"old content")
    with pytest.raises(Crash), _io.atomic_file(target) as tmp:
        tmp.write_bytes(b"half of the new")
        raise Crash
    assert target.read_bytes() == b"old content"
    assert _names(tmp_path) == ["data.bin"]
    _io.write_bytes_atomic(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert _names(tmp_path) == ["data.bin"]


def test_atomic_file_gets_umask_permissions(tmp_path):
    target = _io.write_json_atomic(tmp_path / "a.json", {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}
    assert stat.S_IMODE(os.stat(target).st_mode) == _io.default_mode()


def test_atomic_file_refuses_a_folder_and_an_empty_write(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"), _io.atomic_file(tmp_path):
        pass
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with _io.atomic_file(tmp_path / "a"):
            pass
    assert _names(tmp_path) == []


def test_atomic_directory_keeps_the_old_folder_when_the_build_crashes(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "index.html").write_text("old report")
    with pytest.raises(Crash), _io.atomic_directory(out) as tmp:
        (tmp / "index.html").write_text("new report, half")
        (tmp / "sub").mkdir()
        raise Crash
    assert _names(tmp_path) == ["out"]
    assert _names(out) == ["index.html"] and (out / "index.html").read_text() == "old report"


def test_atomic_directory_swaps_in_the_new_folder_whole(tmp_path):
    out = tmp_path / "nested" / "out"
    with _io.atomic_directory(out) as tmp:
        assert tmp.parent == out.parent and not out.exists()
        (tmp / "a.txt").write_text("1")
    assert _names(out) == ["a.txt"]
    assert stat.S_IMODE(os.stat(out).st_mode) == _io.default_mode(directory=True)
    with _io.atomic_directory(out) as tmp:
        (tmp / "b.txt").write_text("2")
    assert _names(out) == ["b.txt"]  # replaced, not merged
    assert _names(out.parent) == ["out"]  # the old folder set aside is gone
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is a file"), _io.atomic_directory(tmp_path / "file"):
        pass


def test_safetensors_crash_in_the_middle_keeps_the_old_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = _io.save_tensors_atomic({"x": torch.zeros(3)}, tmp_path / "t.safetensors")
    real = safetensors.torch.save_file

    def half_then_crash(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(10)
        raise Crash("killed mid-write")

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_crash)
    with pytest.raises(Crash):
        _io.save_tensors_atomic({"x": torch.ones(3)}, path)
    assert _names(tmp_path) == ["t.safetensors"]
    tensors, _ = _io.load_tensors(path)
    torch.testing.assert_close(tensors["x"], torch.zeros(3))


def test_activations_save_crash_keeps_the_old_folder(tmp_path, monkeypatch):
    from concept_probe.extraction import _storage

    def acts(value):
        return cp.Activations(
            A=torch.full((4, 3), value), sample=torch.tensor([0, 0, 1, 1]), kind="pooled"
        )

    path = acts(1.0).save(tmp_path / "acts")
    real = _storage._save_npy
    calls = []

    def crash_on_second(path_, arr, name):
        calls.append(name)
        if len(calls) == 2:
            raise Crash("killed mid-save")
        return real(path_, arr, name)

    monkeypatch.setattr(_storage, "_save_npy", crash_on_second)
    with pytest.raises(Crash):
        acts(2.0).save(path)
    assert _names(tmp_path) == ["acts"]
    back = cp.Activations.load(path)
    torch.testing.assert_close(back.A, torch.full((4, 3), 1.0))


def test_check_format_messages():
    ok = {"format": "concept_probe.x", "version": 2}
    assert _io.check_format(ok, fmt="concept_probe.x", version=2, source="f", what="x") == ok
    with pytest.raises(CorruptFileError) as err:
        _io.check_format(
            {"format": "concept_probe.x", "version": 3},
            fmt="concept_probe.x",
            version=2,
            source="fit/manifest.json",
            what="concept_probe fit folder",
        )
    assert str(err.value) == (
        "fit/manifest.json was written by a newer concept_probe (concept_probe.x format version "
        "3; this one reads up to 2). Upgrade concept_probe to read it."
    )
    with pytest.raises(CorruptFileError) as err:
        _io.check_format(
            {"format": "other"}, fmt="concept_probe.x", version=1, source="f", what="x"
        )
    assert str(err.value) == (
        "f is not a x: its header declares format 'other', expected 'concept_probe.x'."
    )
    with pytest.raises(CorruptFileError, match="declares no format"):
        _io.check_format([1, 2], fmt="concept_probe.x", version=1, source="f", what="x")
    with pytest.raises(CorruptFileError, match="version '2', not an integer"):
        _io.check_format(
            {"format": "concept_probe.x", "version": "2"},
            fmt="concept_probe.x",
            version=1,
            source="f",
            what="x",
        )


def test_every_reader_uses_the_one_version_check(tmp_path):
    # The estimator file and the Activations folder both refuse a newer version the same way.
    from safetensors.torch import save_file

    header = {"format": "concept_probe.dictionary", "format_version": 99, "class": "ConvexNMF"}
    save_file(
        {"D": torch.zeros(2, 2)},
        str(tmp_path / "new.safetensors"),
        metadata={"concept_probe": json.dumps(header)},
    )
    with pytest.raises(CorruptFileError, match=r"newer concept_probe .*format version 99"):
        cp.ConvexNMF.load(tmp_path / "new.safetensors")
    path = cp.Activations(A=torch.ones(2, 2), sample=torch.tensor([0, 1]), kind="pooled").save(
        tmp_path / "acts"
    )
    man = json.loads((path / "manifest.json").read_text())
    man["version"] = 99
    (path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CorruptFileError, match=r"newer concept_probe .*format version 99"):
        cp.Activations.load(path)


def test_folder_lock_through_a_link_is_the_lock_of_its_target(tmp_path):
    """A run at ``--out link`` and one at ``--out <the link's target>`` write the same folder
    (saves follow the link since 96ba730), so they must take the same lock: relative links and
    a link to a link included."""
    from concept_probe.errors import FolderBusyError

    (tmp_path / "disk").mkdir()
    target = tmp_path / "disk" / "out"
    target.mkdir()
    (tmp_path / "a").mkdir()
    link = tmp_path / "a" / "out"
    link.symlink_to(os.path.join("..", "disk", "out"))  # relative, into another folder
    chain = tmp_path / "chain"
    chain.symlink_to(link)  # a link to the link
    for first, second in ((link, target), (target, link), (chain, target), (link, chain)):
        with _io.folder_lock(first):
            with pytest.raises(FolderBusyError, match=rf"{second.name} is in use"):
                with _io.folder_lock(second):
                    pass
    with _io.folder_lock(link):  # released: free again
        pass
    assert not (tmp_path / "a" / ".out.lock").exists()  # the lock sits beside the target
