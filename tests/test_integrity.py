"""Nothing lost, nothing silent on disk (issue 14).

- two runs into one output folder: the second refuses at once, naming the folder and the pid;
  a killed holder releases the lock;
- a flipped byte in any file concept_probe writes is reported as corrupt, naming the file;
- SIGTERM mid-report leaves no temporary folder; dead processes' temporaries are removed by the
  next run, a live process's are kept.

The concurrent cases use real processes (``subprocess``); the holder is slowed deterministically
by a patched function that announces itself through a file and waits for a release file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli_helpers import error_line
from _cli_helpers import run_cli as _cli

import concept_probe as cp
from concept_probe._io import folder_lock, remove_stale_temporaries
from concept_probe.cli import main
from concept_probe.errors import CorruptFileError, FolderBusyError

REPO = Path(__file__).resolve().parents[1]
ENV = dict(
    os.environ,
    PYTHONPATH=str(REPO),
    OMP_NUM_THREADS="1",
    MKL_NUM_THREADS="1",
    MPLBACKEND="Agg",
)


def _acts(n=48, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 255, (n, 8, 8, 3), generator=g, dtype=torch.uint8)
    return cp.Activations(
        torch.rand(n, d, generator=g),
        torch.arange(n),
        kind="pooled",
        labels=torch.arange(n) % 2,
        label_names=["a", "b"],
        images=images.numpy(),
        sample_ids=[f"img{i}.png" for i in range(n)],
        meta={"model": "tiny", "layer": "layer3"},
    )


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """An activations folder and a fit folder written by the library."""
    root = tmp_path_factory.mktemp("saved")
    acts = _acts()
    acts.save(root / "acts.cp")
    nmf = cp.ConvexNMF(3, seed=0, tol=0)
    Z, _ = nmf.fit(acts.A, max_iter=10)
    cp.save_fit(root / "fit", nmf, Z, acts)
    return root


# A child that runs the CLI with one function replaced by a wait: it writes READY, then waits
# until RELEASE exists (or forever), then calls the real function.
_HOLDER = textwrap.dedent(
    """
    import sys, time, importlib
    from pathlib import Path
    module_name, attr, ready, release = sys.argv[1:5]
    module = importlib.import_module(module_name)
    real = getattr(module, attr)
    def slow(*args, **kwargs):
        Path(ready).write_text("x")
        while not Path(release).exists():
            time.sleep(0.02)
        return real(*args, **kwargs)
    setattr(module, attr, slow)
    from concept_probe.cli import main
    sys.exit(main(sys.argv[5:]))
    """
)


def _start_holder(tmp_path, target: str, argv: list) -> tuple[subprocess.Popen, Path, Path]:
    module, attr = target.rsplit(".", 1)
    ready, release = tmp_path / "ready", tmp_path / "release"
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, module, attr, str(ready), str(release), *map(str, argv)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate(timeout=5) if proc.poll() is not None else ("", "")
            proc.kill()
            pytest.fail(f"holder did not reach {target}: rc={proc.returncode} {out} {err}")
        time.sleep(0.02)
    return proc, ready, release


def _cli_process(*argv) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "concept_probe", *map(str, argv)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ------------------------------------------------------------------ 1. one run per folder
def test_a_second_run_into_the_same_folder_refuses_naming_the_holder(saved, tmp_path):
    out = tmp_path / "fit"
    holder, _, release = _start_holder(
        tmp_path,
        "concept_probe.cli._save_fit",
        ["fit", saved / "acts.cp", "--concepts", "2", "--max-iter", "5", "--out", out, "--quiet"],
    )
    try:
        second = _cli_process(
            "fit", saved / "acts.cp", "--concepts", "3", "--max-iter", "5", "--out", out
        )
    finally:
        release.write_text("go")
        _, err_text = holder.communicate(timeout=120)
    assert second.returncode == 2, second.stderr
    line = error_line(second.stderr, notes=False)
    assert str(out) in line and f"pid {holder.pid}" in line and "in use" in line
    assert holder.returncode == 0, err_text
    # the folder holds the first run's fit only (k=2), never a mix
    assert cp.load_fit(out).estimator.nb_concepts == 2


def test_a_killed_holder_releases_the_lock_and_its_temporary_is_removed(saved, tmp_path):
    out = tmp_path / "report"
    holder, _, _ = _start_holder(
        tmp_path,
        "concept_probe.visualization.report._build",
        ["report", saved / "acts.cp", saved / "fit", "--out", out, "--top", "2"],
    )
    leftovers = list(tmp_path.glob(".report.tmp-*"))
    assert len(leftovers) == 1 and str(holder.pid) in leftovers[0].name
    holder.send_signal(signal.SIGKILL)  # no cleanup can run: the OS drops the lock
    holder.communicate(timeout=30)
    assert list(tmp_path.glob(".report.tmp-*")) == leftovers
    res = _cli_process("report", saved / "acts.cp", saved / "fit", "--out", out, "--top", "2")
    assert res.returncode == 0, res.stderr
    assert (out / "index.html").is_file()
    assert list(tmp_path.glob(".report.tmp-*")) == []  # the dead process's temporary is gone


def test_folder_lock_in_process(tmp_path):
    with folder_lock(tmp_path / "x"):
        with pytest.raises(FolderBusyError, match=rf"x is in use .*pid {os.getpid()}"):
            with folder_lock(tmp_path / "x"):
                pass  # pragma: no cover
    with folder_lock(tmp_path / "x"):  # released on exit
        pass


# ---------------------------------------------------------------- 3. SIGTERM, stale temps
def test_sigterm_mid_report_leaves_no_temporary_and_the_next_run_works(saved, tmp_path):
    out = tmp_path / "report"
    argv = ["report", saved / "acts.cp", saved / "fit", "--out", out, "--top", "2"]
    holder, _, _ = _start_holder(tmp_path, "concept_probe.visualization.report._build", argv)
    assert list(tmp_path.glob(".report.tmp-*")), "the report was not being written"
    holder.send_signal(signal.SIGTERM)
    _, err = holder.communicate(timeout=60)
    assert holder.returncode == 143, err
    assert "terminated" in err and "Traceback" not in err
    assert list(tmp_path.glob(".report*tmp*")) == [] and not out.exists()
    res = _cli_process(*argv)
    assert res.returncode == 0, res.stderr
    assert (out / "index.html").is_file()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporaries_of_dead_processes_go_live_ones_stay(saved, tmp_path, capsys):
    out = tmp_path / "report"
    dead = tmp_path / f".report.tmp-{_dead_pid()}-0123abcd"
    live_proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".report.tmp-{live_proc.pid}-89abcdef"
        unrelated = tmp_path / f".other.tmp-{_dead_pid()}-0123abcd"
        for folder in (dead, live, unrelated):
            folder.mkdir()
            (folder / "index.html").write_text("half")
        code, _, err = _cli(
            capsys, "report", saved / "acts.cp", saved / "fit", "--out", out, "--top", "2"
        )
        assert code == 0, err
        assert not dead.exists()
        assert live.is_dir() and unrelated.is_dir()  # another target's temporaries are not ours
        assert remove_stale_temporaries(tmp_path / "other") == [unrelated]
    finally:
        live_proc.kill()
        live_proc.wait()


# ------------------------------------------------------------------------- 2. checksums
ACTS_FILES = [
    "manifest.json",
    "A.npy",
    "sample.npy",
    "labels.npy",
    "images.npy",
    "strings.json",
]
FIT_FILES = ["manifest.json", "concepts.safetensors", "codes.safetensors"]


def test_the_parametrised_lists_cover_every_file(saved):
    assert sorted(p.name for p in (saved / "acts.cp").iterdir()) == sorted(ACTS_FILES)
    assert sorted(p.name for p in (saved / "fit").iterdir()) == sorted(FIT_FILES)


def _flip(file: Path, where: str) -> None:
    raw = bytearray(file.read_bytes())
    i = {"middle": len(raw) // 2, "last": len(raw) - 1}[where]
    raw[i] ^= 0x01  # one bit: a digit in JSON still parses, a float is still a float
    file.write_bytes(bytes(raw))


CASES = [("acts.cp", f) for f in ACTS_FILES] + [("fit", f) for f in FIT_FILES]


@pytest.mark.parametrize("where", ["middle", "last"])
@pytest.mark.parametrize(("folder", "name"), CASES, ids=[f"{a}/{b}" for a, b in CASES])
def test_a_flipped_byte_in_any_saved_file_is_reported_corrupt(
    saved, tmp_path, capsys, folder, name, where
):
    shutil.copytree(saved / "acts.cp", tmp_path / "acts.cp")
    shutil.copytree(saved / "fit", tmp_path / "fit")
    damaged = tmp_path / folder / name
    _flip(damaged, where)
    with pytest.raises(CorruptFileError, match="corrupt") as info:
        cp.verify(tmp_path / folder)
    assert name in str(info.value)
    # the report stage reads both folders: exit 2, one line, naming the file
    code, _, err = _cli(
        capsys, "report", tmp_path / "acts.cp", tmp_path / "fit", "--out", tmp_path / "r"
    )
    assert code == 2
    line = error_line(err, notes=False)
    assert "corrupt" in line and name in line and "mismatch" not in line
    assert "not made on these activations" not in line
    assert not (tmp_path / "r").exists()
    code, _, err = _cli(capsys, "verify", tmp_path / folder)
    assert code == 2 and name in error_line(err, notes=False)


def test_loading_whole_checks_A_and_mmap_defers_to_verify(saved, tmp_path):
    shutil.copytree(saved / "acts.cp", tmp_path / "acts.cp")
    _flip(tmp_path / "acts.cp" / "A.npy", "last")
    with pytest.raises(CorruptFileError, match=r"A\.npy is corrupt"):
        cp.Activations.load(tmp_path / "acts.cp")
    cp.Activations.load(tmp_path / "acts.cp", mmap=True)  # cheap: the chunks are not read
    with pytest.raises(CorruptFileError, match=r"A\.npy is corrupt"):
        cp.verify(tmp_path / "acts.cp")


def test_a_standalone_estimator_file_is_checked(saved, tmp_path):
    nmf = cp.load_fit(saved / "fit").estimator
    path = nmf.save(tmp_path / "nmf.safetensors")
    _flip(path, "last")
    with pytest.raises(CorruptFileError, match=r"nmf\.safetensors is corrupt"):
        cp.ConvexNMF.load(path)


def test_folders_without_checksums_still_load(saved, tmp_path):
    import json

    shutil.copytree(saved / "acts.cp", tmp_path / "acts.cp")
    man_file = tmp_path / "acts.cp" / "manifest.json"
    man = json.loads(man_file.read_text())
    man.pop("sha256_self")
    for entry in man["files"]["arrays"].values():
        entry.pop("chunks", None)
    man_file.write_text(json.dumps(man))
    acts = cp.Activations.load(tmp_path / "acts.cp")
    assert cp.verify(tmp_path / "acts.cp") == tmp_path / "acts.cp"
    np.testing.assert_array_equal(acts.A.numpy(), _acts().A.numpy())


def test_cli_verify_accepts_a_good_run_folder(saved, capsys):
    code, out, err = _cli(capsys, "verify", saved / "fit")
    assert code == 0, err
    assert "matches its checksum" in out


@pytest.fixture(scope="module")
def evaluation_folder(saved):
    out = saved / "eval"
    argv = ["evaluate", saved / "acts.cp", "--k", "2", "3", "--seeds", "2", "--folds", "2"]
    argv += ["--solver", "mu", "--max-iter", "20", "--out", out]
    assert main([str(a) for a in argv]) == 0
    return out


EVAL_FILES = ["summary.json", "dictionaries.safetensors", "checksums.json"]


@pytest.mark.parametrize("name", EVAL_FILES)
def test_a_flipped_byte_in_an_evaluation_folder_is_reported_corrupt(
    saved, evaluation_folder, tmp_path, capsys, name
):
    assert set(EVAL_FILES) <= {p.name for p in evaluation_folder.iterdir()}
    shutil.copytree(evaluation_folder, tmp_path / "eval")
    _flip(tmp_path / "eval" / name, "middle")
    argv = ["report", saved / "acts.cp", saved / "fit", "--evaluation", tmp_path / "eval"]
    code, _, err = _cli(capsys, *argv, "--out", tmp_path / "r")
    assert code == 2
    line = error_line(err, notes=False)
    assert "corrupt" in line and name in line
