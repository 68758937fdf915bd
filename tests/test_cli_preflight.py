"""``concept-probe`` finds what cannot work before the first forward pass (issue 14).

An unwritable --out, a --concepts larger than the rows, and a disk too small used to surface
only after the extraction (and the fit); now each fails at once: one line, exit 2, nothing
written, and no input read.
"""

import os
from pathlib import Path

import pytest
from _cli_helpers import one_line_error as _error
from _cli_helpers import run_cli as _cli
from PIL import Image

DEMO_MODEL = ["--model", "concept_probe.zoo:load_demo_model", "--layer", "layer3"]


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    """Eight of the demo's 64 px shapes images as PNG files (4 x 4 = 16 rows each at layer3)."""
    from concept_probe import zoo

    folder = tmp_path_factory.mktemp("shapes")
    for i, img in enumerate(zoo.make_shapes(8, seed=3).images):
        Image.fromarray(img.numpy()).save(folder / f"s{i:02d}.png")
    return folder


@pytest.fixture
def opened(monkeypatch):
    """Paths of the input images the command read (the shape probe reads none)."""
    from concept_probe.extraction import _image_sources

    seen = []
    real = _image_sources._open_image

    def spy(path):
        seen.append(path)
        return real(path)

    monkeypatch.setattr(_image_sources, "_open_image", spy)  # where the file source calls it
    return seen


def _nothing_written(tmp_path: Path, *keep: str) -> None:
    left = sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock"))
    assert left == sorted(keep), left


def test_concepts_larger_than_the_rows_fails_before_any_image_is_read(
    shapes_folder, tmp_path, capsys, opened
):
    out = tmp_path / "out"
    code, _, err = _cli(
        capsys, "run", *DEMO_MODEL, "--images", shapes_folder, "--concepts", "500", "--out", out
    )
    line = _error(code, err)
    # before: the extraction ran, then the fit said "nb_concepts=500 is larger than ... 128"
    assert line == (
        "--concepts 500 is larger than the 128 rows the extraction will give at layer layer3 "
        "(8 inputs, 16 rows each); use --concepts 128 or fewer, or give more inputs."
    )
    assert opened == [] and not out.exists()
    # --max-rows caps the rows, and the message says so
    code, _, err = _cli(
        capsys,
        "run",
        *DEMO_MODEL,
        "--images",
        shapes_folder,
        "--max-rows",
        "20",
        "--concepts",
        "21",
        "--out",
        out,
    )
    assert "than the 20 rows" in _error(code, err) and "(--max-rows caps them)" in err
    assert opened == [] and not out.exists()


def test_concepts_too_large_on_the_demo_and_pooled_rows(shapes_folder, tmp_path, capsys, opened):
    code, _, err = _cli(
        capsys, "run", "--n-images", "3", "--concepts", "49", "--out", tmp_path / "o"
    )
    assert "--concepts 49 is larger than the 48 rows" in _error(code, err)
    code, _, err = _cli(
        capsys,
        "run",
        *DEMO_MODEL,
        "--images",
        shapes_folder,
        "--mode",
        "pooled",
        "--concepts",
        "9",
        "--out",
        tmp_path / "o",
    )
    assert "than the 8 rows" in _error(code, err) and "1 rows each" in err
    assert opened == []
    _nothing_written(tmp_path)


def test_fit_refuses_concepts_larger_than_the_saved_rows(shapes_folder, tmp_path, capsys):
    acts = tmp_path / "a.cp"
    code, _, err = _cli(capsys, "extract", "--n-images", "2", "--out", acts, "--quiet")
    assert code == 0, err
    code, _, err = _cli(capsys, "fit", acts, "--concepts", "33", "--out", tmp_path / "fit")
    assert _error(code, err) == (
        f"--concepts 33 is larger than the 32 rows of {acts}; use --concepts 32 or fewer, or "
        f"extract more inputs."
    )
    assert not (tmp_path / "fit").exists()


def test_out_that_cannot_be_a_folder_is_refused_first(shapes_folder, tmp_path, capsys, opened):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    for command in (["run"], ["extract"], ["run", *DEMO_MODEL, "--images", shapes_folder]):
        code, _, err = _cli(capsys, *command, "--out", afile / "sub" / "out")
        assert _error(code, err) == (
            f"--out {afile / 'sub' / 'out'} cannot be created: {afile} is a file, not a "
            f"folder; choose a --out path below a folder."
        )
        code, _, err = _cli(capsys, *command, "--out", afile)
        assert "is an existing file; give a folder" in _error(code, err)
    assert opened == [] and afile.read_text() == "not a folder"
    _nothing_written(tmp_path, "afile")


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes anywhere")
def test_read_only_out_is_refused_before_the_extraction(shapes_folder, tmp_path, capsys, opened):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for out in (ro / "new", ro):  # a folder to create in it, or the folder itself
            code, _, err = _cli(
                capsys, "run", *DEMO_MODEL, "--images", shapes_folder, "--out", out, "--quiet"
            )
            line = _error(code, err)
            assert line.startswith(f"--out {out}: cannot write in {ro} (Permission denied)")
            assert "choose a folder you can write to with --out" in line
        assert opened == [] and list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_too_little_disk_space_is_found_before_the_extraction(
    shapes_folder, tmp_path, capsys, opened, monkeypatch
):
    import concept_probe._io as io

    monkeypatch.setattr(io, "free_bytes", lambda path: 1000)
    out = tmp_path / "acts.cp"
    code, _, err = _cli(capsys, "extract", *DEMO_MODEL, "--images", shapes_folder, "--out", out)
    line = _error(code, err)
    assert line.startswith(f"--out {out}: this run needs about ")
    assert "(128 rows x 64 features, float32; twice that while its shards are merged)" in line
    assert line.endswith(
        "but only 0.0 MB are free there; free some space, or choose --out on another disk."
    )
    assert opened == [] and not out.exists()


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_out_through_a_broken_symlink_is_refused_first(shapes_folder, tmp_path, capsys, opened):
    # The pre-flight took a dangling link for a free name; the extraction then ran to the end
    # and failed on the final rename ("Not a directory") or the folder creation ("File
    # exists").
    link = tmp_path / "gone"
    link.symlink_to(tmp_path / "no-such-folder")
    for out in (link, link / "sub"):
        for command in (["extract"], ["run", *DEMO_MODEL, "--images", shapes_folder]):
            code, _, err = _cli(capsys, *command, "--out", out, "--quiet")
            assert _error(code, err) == (
                f"--out {out} cannot be created: {link} is a broken symbolic link (to "
                f"{tmp_path / 'no-such-folder'}); remove it, or point it at a folder."
            )
    assert opened == [] and link.is_symlink() and not link.exists()
    _nothing_written(tmp_path, "gone")


def _read_only_binds(folder: Path) -> bool:
    """Whether a 0o555 folder stops this process (not for root with CAP_DAC_OVERRIDE)."""
    folder.chmod(0o555)
    try:
        (folder / ".probe").touch()
    except PermissionError:
        return True
    (folder / ".probe").unlink()
    folder.chmod(0o755)
    return False


@pytest.mark.skipif(os.name != "posix", reason="symbolic links and permission bits")
def test_out_linked_below_a_read_only_folder_is_refused_first(
    shapes_folder, tmp_path, capsys, opened
):
    # A link to a folder is written where it points, its temporaries beside the target: the
    # pre-flight probed the link's own folder and let the run fail at the end.
    ro = tmp_path / "ro"
    (ro / "acts").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(ro / "acts", target_is_directory=True)
    if not _read_only_binds(ro):
        pytest.skip("this process writes in read-only folders (root)")
    try:
        code, _, err = _cli(
            capsys, "run", *DEMO_MODEL, "--images", shapes_folder, "--out", link, "--quiet"
        )
        line = _error(code, err)
        assert line.startswith(f"--out {link}: cannot write in {ro} (Permission denied)"), line
        assert opened == [] and list((ro / "acts").iterdir()) == []
    finally:
        ro.chmod(0o755)
