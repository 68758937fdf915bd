"""``concept-probe extract`` and ``run`` resume what a killed run left on disk (issue 14).

The library could resume an interrupted extraction bit-identically; the command line now does
too: the same command again resumes from the first input not yet on disk and says so, a
finished extraction (and a fit with the same settings) is reused, and a folder made with another
model or layer is refused in flags. The inputs are the demo's shapes images as PNG files and
the demo model by its factory (16 rows of 64 features per image at layer3).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from _cli_helpers import one_line_error as _error
from _cli_helpers import run_cli as _cli
from PIL import Image

from concept_probe import Activations

ROOT = Path(__file__).resolve().parents[1]
DEMO_MODEL = ["--model", "concept_probe.zoo:load_demo_model", "--layer", "layer3"]
# Run in the killed process: one shard per batch (32 MiB by default: one shard in all here),
# and a pause in every forward pass so that it is still running when it is killed.
SLOW_CHILD = """
import sys, time
import concept_probe.extraction._engine as engine
engine.SHARD_BYTES = 1
forward = engine._forward
def slow(*args, **kwargs):
    time.sleep(0.25)
    return forward(*args, **kwargs)
engine._forward = slow
from concept_probe.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def shapes_folder(tmp_path_factory):
    from concept_probe import zoo

    folder = tmp_path_factory.mktemp("shapes")
    for i, img in enumerate(zoo.make_shapes(12, seed=5).images):
        Image.fromarray(img.numpy()).save(folder / f"s{i:02d}.png")
    return folder


def _shards_done(out: Path) -> int:
    try:
        return len(json.loads((out / "progress.json").read_text())["shards"])
    except (OSError, ValueError, KeyError):  # not written yet, or being replaced
        return 0


def _same_arrays(a: Path, b: Path) -> None:
    x, y = Activations.load(a), Activations.load(b)
    for name in ("A", "sample", "position", "images"):
        assert np.array_equal(getattr(x, name).numpy(), getattr(y, name).numpy()), name
    assert x.sample_ids == y.sample_ids and x.grid == y.grid
    for name in ("A.npy", "sample.npy", "position.npy"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_killed_extract_resumes_bit_identically_and_refuses_other_settings(
    shapes_folder, tmp_path, capsys, monkeypatch
):
    argv = ["extract", *DEMO_MODEL, "--images", shapes_folder, "--batch-size", "1", "--quiet"]
    code, _, err = _cli(capsys, *argv, "--out", tmp_path / "whole.cp")
    assert code == 0, err

    out = tmp_path / "acts.cp"
    # SIGKILL: no handler runs, what is on disk is all there is
    done = _kill_after(argv, out, tmp_path / "child.log", 3)
    assert 3 <= done < 12 and not (out / "manifest.json").exists()

    # other settings: refused in flags, exit 2, and the partial folder is left as it was
    before = sorted(p.name for p in out.iterdir())
    code, _, err = _cli(capsys, *[a if a != "layer3" else "layer2" for a in argv], "--out", out)
    line = _error(code, err)
    assert line == (
        f"{out} holds an interrupted extraction made with other settings (--layer changed), so "
        f"it cannot be resumed. Give the same arguments as then to resume it, or a new --out "
        f"(or delete {out}) to start again."
    )
    other = ["--model", "resnet18", "--model-kwargs", "channels=[8,16,32,64]", "stem_width=8"]
    code, _, err = _cli(capsys, "extract", *other, "--layer", "layer3", *argv[5:], "--out", out)
    assert "(the model (--model, --checkpoint, --pretrained, --model-kwargs); " in _error(code, err)
    assert sorted(p.name for p in out.iterdir()) == before

    # the same command: resumes from the first input not on disk, and equals one whole run
    monkeypatch.setattr("concept_probe.extraction._engine.SHARD_BYTES", 1)
    code, stdout, err = _cli(capsys, *argv, "--out", out)
    assert code == 0, err
    assert (
        f"note: resumed the interrupted extraction in {out} from input {done + 1} of 12; inputs "
        f"1-{done} were kept, the last '{shapes_folder / f's{done - 1:02d}.png'}'." in err
    )
    assert "Saved 192 rows x 64 features from 12 inputs" in stdout
    _same_arrays(out, tmp_path / "whole.cp")
    assert not (out / "progress.json").exists()

    code, _, err = _cli(capsys, *argv, "--out", out)  # finished: reused, nothing extracted
    assert code == 0 and f"reused the finished extraction in {out}" in err


def test_run_resumes_its_extraction_and_reuses_a_matching_fit(
    shapes_folder, tmp_path, capsys, monkeypatch
):
    import concept_probe.extraction._engine as engine

    two = ["--model", "concept_probe.zoo:load_demo_model", "--layer", "layer2", "--layer", "layer3"]
    argv = ["run", *two, "--images", shapes_folder, "--batch-size", "2", "--concepts", "2"]
    argv += ["--max-iter", "10", "--no-explain", "--quiet"]
    monkeypatch.setattr(engine, "SHARD_BYTES", 1)
    forward, calls = engine._forward, []

    def interrupted(*args, **kwargs):  # the probe, then 3 batches (6 images), then Ctrl-C
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return forward(*args, **kwargs)

    monkeypatch.setattr(engine, "_forward", interrupted)
    out = tmp_path / "run"
    code, _, err = _cli(capsys, *argv, "--out", out)
    assert code == 130, err
    for layer in ("layer2", "layer3"):
        assert (out / layer / "activations.cp" / "progress.json").is_file()
    assert not (out / "layer2" / "fit").exists()

    monkeypatch.setattr(engine, "_forward", forward)
    code, _, err = _cli(capsys, *argv, "--out", out)
    assert code == 0, err
    for layer in ("layer2", "layer3"):
        assert (
            f"resumed the interrupted extraction in {out / layer / 'activations.cp'} from "
            f"input 7 of 12" in err
        )
        assert (out / layer / "report" / "index.html").is_file()
    acts = Activations.load(out / "layer3" / "activations.cp")
    assert acts.n_rows == 192 and acts.sample.tolist() == np.repeat(np.arange(12), 16).tolist()

    fit_file = out / "layer3" / "fit" / "concepts.safetensors"
    stamp = fit_file.stat().st_mtime_ns
    code, _, err = _cli(capsys, *argv, "--out", out)  # all done: extraction and fits reused
    assert code == 0, err
    assert err.count("note: reused the finished extraction") == 2
    assert err.count("the report is written again") == 2
    assert fit_file.stat().st_mtime_ns == stamp
    # other fit settings, or other activations: fitted again (no run needed to see it)
    from concept_probe import ConvexNMF
    from concept_probe.cli import _reusable_fit

    fit = out / "layer3" / "fit"
    same = dict(solver="pgd", l1_penalty=0.0, strict_convex=False, seed=0, max_iter=10)
    assert _reusable_fit(fit, acts, ConvexNMF(2, verbose=False, **same)) is not None
    assert _reusable_fit(fit, acts, ConvexNMF(3, verbose=False, **same)) is None
    assert _reusable_fit(fit, acts, ConvexNMF(2, **{**same, "seed": 1})) is None
    other = Activations.load(out / "layer2" / "activations.cp")
    assert _reusable_fit(fit, other, ConvexNMF(2, **same)) is None


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory):
    """12 shapes in two class folders, at sizes whose medians differ between parts of the run,
    some small enough to be upsampled more than 2x; and one file that is not an image."""
    from concept_probe import zoo

    folder = tmp_path_factory.mktemp("labelled")
    sizes = [64, 20, 48, 24, 96, 16, 40, 28, 72, 18, 56, 30]
    for i, img in enumerate(zoo.make_shapes(12, seed=5).images):
        (folder / "ab"[i % 2]).mkdir(exist_ok=True)
        im = Image.fromarray(img.numpy()).resize((sizes[i], sizes[i] + i % 3))
        im.save(folder / "ab"[i % 2] / f"s{i:02d}.png")
    (folder / "b" / "s99.png").write_bytes(b"not a png")
    return folder


def _kill_after(argv: list, out: Path, log: Path, n_shards: int) -> int:
    """Run the CLI in a slow child and SIGKILL it once ``n_shards`` shards are on disk."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    with open(log, "wb") as sink:
        child = subprocess.Popen(
            [sys.executable, "-c", SLOW_CHILD, *map(str, argv), "--out", str(out)],
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while _shards_done(out) < n_shards and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert child.poll() is None, log.read_text()[-2000:]
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    return _shards_done(out)


def test_killed_extract_resumes_with_the_whole_runs_metadata(
    labelled_folder, tmp_path, capsys, monkeypatch
):
    """The accuracy, the image sizes and the skipped files count every input, not only those
    of the session that finished the run."""
    argv = ["extract", *DEMO_MODEL, "--images", labelled_folder, "--batch-size", "1"]
    argv += ["--skip-unreadable", "--quiet"]
    code, _, err = _cli(capsys, *argv, "--out", tmp_path / "whole.cp")
    assert code == 0, err
    whole = Activations.load(tmp_path / "whole.cp").meta
    assert whole["predictions"]["n_images"] == whole["predictions"]["n_labelled"] == 12
    assert whole["image_sizes"]["n_images"] == 12 and whole["image_sizes"]["n_upsampled_2x"] == 6
    assert [s["path"] for s in whole["skipped"]] == [str(labelled_folder / "b" / "s99.png")]

    out = tmp_path / "acts.cp"
    done = _kill_after(argv, out, tmp_path / "child.log", 4)
    assert 4 <= done < 12 and not (out / "manifest.json").exists()
    monkeypatch.setattr("concept_probe.extraction._engine.SHARD_BYTES", 1)
    code, _, err = _cli(capsys, *argv, "--out", out)
    assert code == 0, err
    assert f"from input {done + 1} of 12" in err
    _same_arrays(out, tmp_path / "whole.cp")
    resumed = Activations.load(out).meta
    for key in ("predictions", "image_sizes", "skipped"):
        assert resumed[key] == whole[key], key
    assert resumed == whole


def test_a_resume_that_skip_unreadable_would_change_is_refused_naming_the_flag(
    shapes_folder, tmp_path, capsys, monkeypatch
):
    """Without --skip-unreadable the run stops at a file that fails only when decoded and
    keeps the inputs before it; with the flag that file is left out, so the inputs differ and
    the resume is refused in flags, the partial folder left as it was."""
    import io
    import shutil

    folder = tmp_path / "images"
    shutil.copytree(shapes_folder, folder)
    b = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(b, "PNG")  # noise: the file is far longer than 300 bytes
    (folder / "s03b.png").write_bytes(b.getvalue()[:300])  # the header reads, the pixels do not
    monkeypatch.setattr("concept_probe.extraction._engine.SHARD_BYTES", 1)  # a shard a batch
    out = tmp_path / "acts.cp"
    argv = ["extract", *DEMO_MODEL, "--images", folder, "--batch-size", "1", "--quiet"]
    code, _, err = _cli(capsys, *argv, "--out", out)
    assert "s03b.png" in _error(code, err)
    assert _shards_done(out) == 4  # s00-s03 kept, the run stopped at s03b
    before = sorted(p.name for p in out.iterdir())
    code, _, err = _cli(capsys, *argv, "--skip-unreadable", "--out", out)
    # the skip is announced (it is what changed the inputs), then the one error line
    skip_note = next(x for x in err.splitlines() if x.startswith("warning: skipped 1 "))
    assert "s03b.png" in skip_note
    line = _error(code, err.replace(skip_note, ""))
    assert "--skip-unreadable changed), so it cannot be resumed" in line, line
    assert sorted(p.name for p in out.iterdir()) == before
