"""The fit folder: save_fit / load_fit round trip, refusals with library errors, atomicity."""

import json

import numpy as np
import pytest
import torch

import concept_probe as cp
from concept_probe.errors import CorruptFileError, FitMismatchError


def _acts(n=40, d=6, seed=0, layer="layer3"):
    g = torch.Generator().manual_seed(seed)
    return cp.Activations(
        torch.rand(n, d, generator=g),
        torch.arange(n),
        kind="pooled",
        meta={"model": "tiny", "layer": layer},
    )


@pytest.fixture(scope="module")
def fitted():
    acts = _acts()
    nmf = cp.ConvexNMF(3, seed=0, tol=0)
    Z, _ = nmf.fit(acts.A, max_iter=10)
    return acts, nmf, Z


def test_round_trip_from_a_notebook(fitted, tmp_path):
    acts, nmf, Z = fitted
    folder = cp.save_fit(tmp_path / "fit", nmf, Z, acts)
    assert sorted(p.name for p in folder.iterdir()) == [
        "codes.safetensors",
        "concepts.safetensors",
        "manifest.json",
    ]
    man = json.loads((folder / "manifest.json").read_text())
    assert man["format"] == "concept_probe.fit" and man["version"] == 1
    assert man["activations"] == cp.activations_fingerprint(acts)
    back = cp.load_fit(folder, acts)
    assert isinstance(back, cp.SavedFit) and isinstance(back.estimator, cp.ConvexNMF)
    assert torch.equal(back.Z, Z.cpu())
    torch.testing.assert_close(back.estimator.W, nmf.W)
    assert back.estimator.n_iter_ == 10
    _, Z2 = cp.load_fit(folder)  # unpacks; no activations: no check
    assert torch.equal(Z2, Z)
    assert tuple(p.name for p in tmp_path.iterdir()) == ("fit",)  # no temporaries left


def test_other_activations_raise_fit_mismatch(fitted, tmp_path):
    acts, nmf, Z = fitted
    folder = cp.save_fit(tmp_path / "fit", nmf, Z, acts)
    with pytest.raises(FitMismatchError, match=r"not made on these activations \(layer layer3"):
        cp.load_fit(folder, _acts(layer="layer4"))
    with pytest.raises(FitMismatchError, match="sum_A"):
        cp.load_fit(folder, _acts(seed=1))
    with pytest.raises(FitMismatchError, match="n_rows 40 vs 41"):
        cp.load_fit(folder, _acts(n=41))


def test_damaged_or_foreign_folders_raise_library_errors(fitted, tmp_path):
    acts, nmf, Z = fitted
    folder = cp.save_fit(tmp_path / "fit", nmf, Z, acts)
    codes = folder / "codes.safetensors"
    raw = codes.read_bytes()
    codes.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match=r"codes\.safetensors is corrupt"):
        cp.load_fit(folder, acts)
    folder = cp.save_fit(tmp_path / "fit", nmf, Z, acts)  # replaces the damaged fit
    man = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(dict(man, version=7)))
    with pytest.raises(CorruptFileError, match=r"newer concept_probe \(concept_probe.fit format"):
        cp.load_fit(folder)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        cp.load_fit(tmp_path / "nope")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a concept_probe fit"):
        cp.save_fit(other, nmf, Z, acts)
    assert (other / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match=r"Z must have shape \(40, 3\)"):
        cp.save_fit(tmp_path / "fit2", nmf, Z[:5], acts)


def test_a_crash_while_saving_keeps_the_previous_fit(fitted, tmp_path, monkeypatch):
    acts, nmf, Z = fitted
    folder = cp.save_fit(tmp_path / "fit", nmf, Z, acts)
    from concept_probe import fit_folder

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(fit_folder, "write_json_atomic", boom)
    other = cp.ConvexNMF(3, seed=1, tol=0)
    Z_other, _ = other.fit(acts.A, max_iter=3)
    with pytest.raises(OSError, match="disk full"):
        cp.save_fit(folder, other, Z_other, acts)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit"]
    assert torch.equal(cp.load_fit(folder, acts).Z, Z)


def test_folders_written_before_the_manifest_still_load(fitted, tmp_path):
    # concept-probe fit used to write the two safetensors files without a manifest.
    acts, nmf, Z = fitted
    folder = cp.save_fit(tmp_path / "fit", nmf, Z, acts)
    (folder / "manifest.json").unlink()
    back = cp.load_fit(folder, acts)
    assert torch.equal(back.Z, Z) and back.manifest["version"] == 0
    with pytest.raises(FitMismatchError):
        cp.load_fit(folder, _acts(layer="layer4"))


def test_rows_and_rank_take_numpy_integers(fitted, tmp_path):
    # Row bounds often come from numpy (np.cumsum of shard sizes, np.searchsorted).
    acts, nmf, Z = fitted
    folder = cp.save_fit(tmp_path / "fit", nmf, Z, acts)
    part = cp.load_fit(folder, rows=(np.int64(2), np.int64(9)))
    assert part.rows == (2, 9) and type(part.rows[0]) is int
    assert torch.equal(part.Z, Z[2:9]) and torch.equal(part.estimator.W, nmf.W[:, 2:9])
    assert cp.load_fit(folder, rank=np.int32(0)).rows == (0, 40)
    with pytest.raises(ValueError, match=r"rows must be \(start, stop\).*got \(True, 3\)"):
        cp.load_fit(folder, rows=(True, 3))


@pytest.mark.skipif(__import__("os").name != "posix", reason="symbolic links")
def test_a_fit_saved_at_a_symlink_lands_in_the_folder_it_points_to(fitted, tmp_path):
    # The swap used to rename the link aside and put a real folder in its place: the fit
    # landed beside the link (on the link's disk, not the target's, whose free space the
    # pre-flight measured), the target stayed empty and a '.link.old-*' link was left behind.
    acts, nmf, Z = fitted
    target = tmp_path / "disk" / "fits"
    target.mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(target, target_is_directory=True)
    for _ in range(2):  # a new fit, then one replaced
        assert cp.save_fit(link, nmf, Z, acts) == link
        assert link.is_symlink() and link.resolve() == target.resolve()
        assert sorted(p.name for p in target.iterdir()) == [
            "codes.safetensors",
            "concepts.safetensors",
            "manifest.json",
        ]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["disk", "link"]
        assert [p.name for p in target.parent.iterdir()] == ["fits"]  # no temporaries left
        assert torch.equal(cp.load_fit(link, acts).Z, Z)
