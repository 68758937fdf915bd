"""Model loading helpers: timm vision models and Hugging Face text models, offline-aware.

Pretrained weights come from the Hugging Face Hub. Offline, timm retries the Hub for about
45 s before failing; :func:`load_vision_model` instead checks first (``HF_HUB_OFFLINE``, then a
connection probe with a short timeout), looks in the local cache only, and fails at once with a
message naming the local-checkpoint alternative.
"""

from __future__ import annotations

import difflib
import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import ConceptProbeError

__all__ = ["PretrainedWeightsUnavailableError", "load_text_model", "load_vision_model"]

_TRUE = {"1", "on", "yes", "true"}
PROBE_TIMEOUT_S = 2.0


class PretrainedWeightsUnavailableError(ConceptProbeError, ConnectionError):
    """Pretrained weights were requested but cannot be downloaded (offline) nor found cached."""


def _offline_env() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _hub_host() -> tuple[str, int]:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)


def _hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the Hub opens within ``timeout`` seconds.

    Runs in a daemon thread so that a hanging DNS lookup cannot block longer than the timeout.
    """
    host, port = _hub_host()
    result = [False]

    def probe():
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return result[0]


@contextmanager
def _hub_offline():
    """Make huggingface_hub look in the local cache only (no network) inside the block."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def _import_timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is a core dependency
        raise ImportError("load_vision_model needs timm: pip install timm") from exc
    return timm


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            sd = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(
                f"checkpoint {str(path)!r} is not a readable safetensors file ({exc})."
            ) from exc
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad files
            raise ValueError(
                f"checkpoint {str(path)!r} could not be read as a weights-only torch checkpoint "
                f"({type(exc).__name__}: {str(exc)[:200]}). Save the state_dict (not the whole "
                f"model object), ideally as .safetensors."
            ) from exc
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(sd, dict) and isinstance(sd.get(key), dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(
            f"checkpoint {str(path)!r} does not hold a state_dict (name -> tensor mapping)."
        )
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel / DDP
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_vision_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a timm model by name, with random, pretrained or local-checkpoint weights.

    Parameters
    ----------
    name : str
        timm model name, e.g. ``"resnet18"`` or ``"vit_small_patch16_224.augreg_in21k"``.
    pretrained : bool, default=False
        Download (or take from the local Hugging Face cache) the pretrained weights. Offline
        and not cached, this fails at once with :class:`PretrainedWeightsUnavailableError`.
    checkpoint : path, optional
        Local weights (``.safetensors``, or a weights-only ``.pth`` / ``.pt`` / ``.bin``
        state_dict, possibly wrapped in ``{"state_dict": ...}``), loaded strictly.
    num_classes : int, optional
        Size of the classifier head; with a checkpoint it is read from the checkpoint when
        not given.
    **kwargs
        Passed to ``timm.create_model`` (e.g. ``img_size=``, ``drop_rate=``).

    Returns
    -------
    nn.Module
        In eval mode.

    Raises
    ------
    ValueError
        Unknown model name (with close matches), unreadable or mismatching checkpoint.
    FileNotFoundError
        If ``checkpoint`` does not exist.
    PretrainedWeightsUnavailableError
        ``pretrained=True`` with no network and nothing in the local cache.
    """
    timm = _import_timm()
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a timm model name (str); got {name!r}.")
    if not timm.is_model(name):
        arch = name.split(".", 1)[0]
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"{name!r} is not a timm model.{hint} List names with timm.list_models('*pattern*')."
        )
    if pretrained and checkpoint is not None:
        raise ValueError(
            "pass either pretrained=True (weights from the Hugging Face Hub) or checkpoint= "
            "(local weights), not both."
        )
    if num_classes is not None:
        kwargs["num_classes"] = num_classes

    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist.")
        sd = _read_state_dict(path)
        model = timm.create_model(name, pretrained=False, **kwargs)
        if num_classes is None:
            head = (
                model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
            )
            w = sd.get(f"{head}.weight") if isinstance(head, str) else None
            own = dict(model.state_dict()).get(f"{head}.weight") if isinstance(head, str) else None
            if w is not None and own is not None and w.shape[0] != own.shape[0]:
                kwargs["num_classes"] = int(w.shape[0])
                model = timm.create_model(name, pretrained=False, **kwargs)
        result = model.load_state_dict(sd, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(
                f"checkpoint {str(path)!r} does not match timm model {name!r} "
                f"({len(result.missing_keys)} missing keys, e.g. {result.missing_keys[:3]}; "
                f"{len(result.unexpected_keys)} unexpected keys, e.g. "
                f"{result.unexpected_keys[:3]}). Check the model name and its keyword arguments "
                f"(num_classes, img_size, ...)."
            )
        return model.eval()

    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs).eval()

    offline_env = _offline_env()
    if offline_env or not _hub_reachable():
        reason = (
            "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set"
            if offline_env
            else f"{_hub_host()[0]} cannot be reached (no network)"
        )
        try:
            with _hub_offline():  # the local cache only: fails in well under a second
                return timm.create_model(name, pretrained=True, **kwargs).eval()
        except Exception as exc:  # timm/huggingface_hub raise many types when offline
            raise PretrainedWeightsUnavailableError(
                f"cannot load pretrained weights for {name!r}: {reason} and they are not in the "
                f"local Hugging Face cache. Download them on a machine with internet access "
                f"(e.g. timm.create_model({name!r}, pretrained=True) and save model.state_dict() "
                f"with safetensors.torch.save_file), copy the file here, and load it with "
                f"load_vision_model({name!r}, checkpoint='path/to/weights.safetensors')."
            ) from exc
    return timm.create_model(name, pretrained=True, **kwargs).eval()


def load_text_model(
    name_or_path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, Any]:
    """Load a Hugging Face model (``AutoModel``, no task head) and its fast tokenizer.

    Parameters
    ----------
    name_or_path : str or path
        A local folder (``config.json``, weights, tokenizer files) or a Hub id. Offline, a Hub
        id is looked up in the local cache only and fails at once if it is not there.
    device : str or torch.device, default='cpu'

    Returns
    -------
    (model, tokenizer)
        The model in eval mode; layer names such as ``"encoder.layer.3"`` (BERT) or ``"h.3"``
        (GPT-2) come from it (see :func:`list_layers`).
    """
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise ImportError(
            "load_text_model needs transformers: pip install 'concept-probe[text]'"
        ) from exc
    from .._torch_utils import resolve_device

    dev = resolve_device(device)
    text = str(name_or_path)
    path = Path(text).expanduser()
    local = path.is_dir()
    looks_local = (
        isinstance(name_or_path, os.PathLike)
        or text.startswith((".", "/", "~"))
        or text.count("/") > 1
        or "\\" in text
    )
    if not local and (looks_local or path.exists()):
        raise FileNotFoundError(
            f"model folder {text!r} does not exist (or is a file); pass a folder holding "
            f"config.json, the weights and the tokenizer files, or a Hub id such as "
            f"'sentence-transformers/all-MiniLM-L6-v2'."
        )
    offline = not local and (_offline_env() or not _hub_reachable())
    kw = {"local_files_only": True} if offline or local else {}
    source = str(path) if local else text
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, use_fast=True, **kw)
        model = AutoModel.from_pretrained(source, **kw)
    except (OSError, ValueError) as exc:
        if offline:
            raise PretrainedWeightsUnavailableError(
                f"cannot load {str(name_or_path)!r}: there is no network and it is not in the "
                f"local Hugging Face cache. Download it on a machine with internet access "
                f"(model.save_pretrained(folder); tokenizer.save_pretrained(folder)), copy the "
                f"folder here and pass its path: load_text_model('path/to/folder')."
            ) from exc
        raise
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{str(name_or_path)!r} has no fast tokenizer (tokenizer.json); extraction needs one "
            f"for character spans."
        )
    return model.to(dev).eval(), tokenizer
