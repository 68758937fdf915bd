"""Small helpers shared by the maths modules: devices, dtypes and random generators."""

from __future__ import annotations

import torch

_FLOAT_DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "float64": torch.float64,
    "double": torch.float64,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """Turn a device spec into a :class:`torch.device`, checking that it is usable.

    Parameters
    ----------
    device : str or torch.device or None
        ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ``'mps'``, ... ``None`` means ``'cpu'``.

    Returns
    -------
    torch.device
        The device, with an explicit index for CUDA.

    Raises
    ------
    ValueError
        If the string is not a device name, or the device is not available on this machine.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(
            f"device={device!r} is not a valid torch device name; use 'cpu', 'cuda', "
            f"'cuda:0' or 'mps'."
        ) from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available on this machine "
                f"(torch {torch.__version__}, torch.cuda.is_available() is False). "
                f"Use device='cpu', or install a CUDA build of torch on a machine with a GPU."
            )
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} CUDA "
                f"device(s) exist; use an index below {torch.cuda.device_count()}."
            )
        return torch.device("cuda", index)
    if dev.type == "mps" and not (
        hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    ):
        raise ValueError(
            f"device={device!r} was requested but the MPS backend is not available here; "
            f"use device='cpu'."
        )
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(
            f"device={device!r} is not supported: concept_probe runs on 'cpu', 'cuda' "
            f"(or 'cuda:N') and 'mps'."
        )
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """Turn ``'float32'``/``'float64'``/``torch.float*`` into a floating torch dtype.

    Raises
    ------
    ValueError
        For anything other than float32 or float64.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        if dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"dtype={dtype!r} is not supported; use 'float32' (default) or 'float64'."
            )
        return _FLOAT_DTYPES[dtype]
    if dtype in (torch.float32, torch.float64):
        return dtype
    raise ValueError(
        f"dtype={dtype!r} is not supported; use torch.float32 (default) or torch.float64."
    )


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """Create the one :class:`torch.Generator` a fit draws all its random numbers from.

    Parameters
    ----------
    seed : int or None
        Seed; ``None`` draws a fresh seed from the operating system's entropy.
    device : torch.device
        Device the generator lives on (random tensors are drawn directly there).
    """
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        from ._checks import check_seed

        gen.manual_seed(check_seed(seed, none_ok=True))
    return gen


def available_memory(device: torch.device | str) -> int | None:
    """Bytes of memory available now on ``device`` (None where it cannot be read).

    CPU: ``MemAvailable`` from ``/proc/meminfo`` (Linux); CUDA: the free bytes
    ``torch.cuda.mem_get_info`` reports.
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None
