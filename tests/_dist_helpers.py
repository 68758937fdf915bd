"""What the distributed tests and their workers share: real Gloo groups on 127.0.0.1.

The tests start their groups with :func:`launch` (one ``python WORKER ...`` process per rank,
on a free port) and collect them with :func:`wait`, or run ``torchrun`` with :func:`torchrun`;
the workers join the group with :func:`init_group` and save what they got with
:func:`save_result`. Nothing here is mocked: every rank is its own process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**env: str) -> dict[str, str]:
    """This process's environment for a child: one thread, this checkout importable, ENV."""
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        **env,
    }


def launch(
    worker: Path, world: int, out: Path, *, before=(), after=(), **env: str
) -> list[subprocess.Popen]:
    """Start WORLD ranks of ``python WORKER *BEFORE RANK WORLD PORT OUT *AFTER`` (one group).

    OUT is made first; ENV is added to each rank's environment; stderr goes to stdout.
    """
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    environ = child_env(**env)
    return [
        subprocess.Popen(
            [sys.executable, str(worker), *map(str, (*before, r, world, port, out, *after))],
            env=environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in range(world)
    ]


def wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str]]:
    """Each rank's ``(exit code, output)``; a rank still running after TIMEOUT s is killed."""
    res = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
        res.append((p.returncode, text.decode(errors="replace")))
    return res


def torchrun(nproc: int, *argv, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --nproc_per_node NPROC -m concept_probe ARGV`` on 127.0.0.1, its output text."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    launcher += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    return subprocess.run(
        [*launcher, "-m", "concept_probe", *map(str, argv)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=240,
        cwd=cwd,
    )


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """The stated tolerance of a distributed fit: float64 1e-10 relative, float32 1e-4."""
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-6}
    torch.testing.assert_close(got, want, **tol)


# ------------------------------------------------------------------------ in the workers
def init_group(rank: int, world: int, port, seconds: float = 60) -> None:
    """Join the Gloo group of WORLD ranks on 127.0.0.1:PORT (collectives time out after SECONDS)."""
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=seconds),
    )


def save_result(out, rank: int, res) -> None:
    """Save RES to OUT/rank<RANK>.pt whole or not at all (the test reads it after the exit)."""
    tmp = os.path.join(out, f".rank{rank}.pt.tmp")
    torch.save(res, tmp)
    os.replace(tmp, os.path.join(out, f"rank{rank}.pt"))
