"""Model loading helpers: timm vision models and Hugging Face text models, offline-aware.

Pretrained weights come from the Hugging Face Hub. Offline, timm retries the Hub for about
45 s before failing; :func:`load_vision_model` instead checks first (``HF_HUB_OFFLINE``, then a
connection probe with a short timeout), looks in the local cache only, and fails at once with a
message naming the local-checkpoint alternative.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
import re
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import CheckpointMismatchError, ConceptProbeError, UnsafeCheckpointError

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


# ------------------------------------------------------------------------ checkpoints
_DATA_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std")
CHECKPOINT_CFG_ATTR = "concept_probe_checkpoint_cfg"  # set on a model loaded from a checkpoint


def _unsafe(path: Path, exc: BaseException) -> UnsafeCheckpointError | None:
    """The refusal of a file that holds Python objects (None: some other unreadable file)."""
    found = re.search(r"GLOBAL (\S+) was not an allowed global", str(exc))
    if found is None:
        return None
    return UnsafeCheckpointError(
        f"checkpoint {str(path)!r} holds pickled Python objects ({found.group(1)}), not only "
        f"tensors; unpickling them could run arbitrary code from the file, so it is not loaded "
        f"(torch.load(weights_only=True) refused it). If you trust the file, re-save its "
        f"weights alone in Python: torch.save(obj.state_dict(), 'weights.pth') or, better, "
        f"safetensors.torch.save_file(obj.state_dict(), 'weights.safetensors')."
    )


def _data_config(meta: Any) -> dict:
    """The preprocessing a checkpoint says it was trained with (input_size, mean, ...)."""
    if not isinstance(meta, dict):
        return {}
    for key in ("data_config", "pretrained_cfg"):
        inner = meta.get(key)
        if isinstance(inner, str):
            try:
                inner = json.loads(inner)
            except json.JSONDecodeError:
                inner = None
        if isinstance(inner, dict):
            found = _data_config(inner)
            if found:
                return found
    out = {}
    for key in _DATA_KEYS:
        v = meta.get(key)
        if isinstance(v, str) and key != "interpolation":
            try:
                v = json.loads(v)
            except json.JSONDecodeError:
                continue
        if v is not None:
            out[key] = tuple(v) if isinstance(v, list) else v
    return out


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a state_dict and the preprocessing it records, never unpickling objects.

    Returns ``(state_dict, data_config)``; ``data_config`` holds whichever of ``input_size``,
    ``crop_pct``, ``interpolation``, ``mean``, ``std`` the file records (safetensors metadata,
    or a ``data_config`` / ``pretrained_cfg`` entry beside the ``state_dict`` of a torch file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist.")
    cfg: dict = {}
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise ValueError(
                f"checkpoint {str(path)!r} is not a readable safetensors file ({exc})."
            ) from exc
        for value in meta.values():  # a JSON entry holding the data config (e.g. the zoo's)
            if value.startswith("{"):
                try:
                    cfg = cfg or _data_config(json.loads(value))
                except json.JSONDecodeError:
                    pass
        cfg = cfg or _data_config(meta)
    else:
        import pickle

        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for bad files
            unsafe = _unsafe(path, exc) if isinstance(exc, pickle.UnpicklingError) else None
            if unsafe is not None:
                raise unsafe from exc
            raise ValueError(
                f"checkpoint {str(path)!r} could not be read as a weights-only torch checkpoint "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}). Save the "
                f"state_dict (not the whole model object), ideally as .safetensors."
            ) from exc
        if isinstance(sd, dict):
            cfg = _data_config(sd)
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
    return sd, cfg


def _strip(sd: dict[str, torch.Tensor], prefix: str | None) -> dict[str, torch.Tensor]:
    if prefix is None:
        return sd
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"strip_prefix must be a non-empty str such as 'model.'; got {prefix!r}.")
    if not any(k.startswith(prefix) for k in sd):
        first = ", ".join(repr(k) for k in list(sd)[:3])
        raise ValueError(
            f"strip_prefix={prefix!r}: no checkpoint key starts with it (keys such as {first}); "
            f"drop the option or give the prefix the keys really have."
        )
    return {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in sd.items()}


def _prefix_hint(own: set[str], unexpected: list[str]) -> str | None:
    """A prefix whose removal makes unexpected checkpoint keys match the model's."""
    counts: dict[str, int] = {}
    for key in unexpected:
        parts = key.split(".")
        for i in range(1, min(len(parts), 3)):
            prefix = ".".join(parts[:i]) + "."
            if key[len(prefix) :] in own:
                counts[prefix] = counts.get(prefix, 0) + 1
    return max(counts, key=counts.get) if counts else None


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(map(str, t.shape)) + ")"


def load_checkpoint_into(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strip_prefix: str | None = None,
    what: str | None = None,
) -> nn.Module:
    """Load a checkpoint strictly into ``model``; every mismatch is one readable error.

    Raises
    ------
    CheckpointMismatchError
        Shape mismatches, missing or unexpected keys: their counts, the first few keys with
        their shapes, and a hint (the model's arguments, or a key prefix to strip).
    UnsafeCheckpointError
        A ``.pt`` / ``.pth`` file that needs unpickling Python objects.
    """
    sd, cfg = read_checkpoint(path)
    sd = _strip(sd, strip_prefix)
    own = model.state_dict()
    what = what or type(model).__name__
    # in the model's order (safetensors files list their keys sorted)
    shapes = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if shapes or missing or unexpected:
        parts = []
        if shapes:
            shown = "; ".join(
                f"{k}: checkpoint {_shape(sd[k])} vs model {_shape(own[k])}" for k in shapes[:3]
            )
            parts.append(f"{len(shapes)} shape mismatch(es) ({shown})")
        if missing:
            shown = ", ".join(f"{k} {_shape(own[k])}" for k in missing[:3])
            parts.append(f"{len(missing)} missing key(s) ({shown})")
        if unexpected:
            shown = ", ".join(f"{k} {_shape(sd[k])}" for k in unexpected[:3])
            parts.append(f"{len(unexpected)} unexpected key(s) ({shown})")
        prefix = _prefix_hint(set(own), unexpected)
        if prefix is not None:
            hint = (
                f"Its keys start with {prefix!r}: strip it with strip_prefix={prefix!r} "
                f"(CLI: --strip-prefix {prefix})."
            )
        else:
            hint = (
                "Build the model with the arguments it was trained with (keyword arguments; "
                "CLI: --model-kwargs, e.g. num_classes=10 or a width), or check the model name."
            )
        raise CheckpointMismatchError(
            f"checkpoint {str(path)!r} does not fit {what}: {'; '.join(parts)}. {hint}"
        )
    model.load_state_dict(sd, strict=True)
    if cfg:
        setattr(model, CHECKPOINT_CFG_ATTR, {"path": str(path), **cfg})
    return model


# ------------------------------------------------------------------------ import strings
_IMPORT_STRING = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_string(name: str) -> bool:
    """Whether ``name`` reads ``package.module:factory``."""
    return isinstance(name, str) and bool(_IMPORT_STRING.match(name))


def _import_factory(spec: str):
    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"--model {spec!r}: cannot import module {module_name!r} ({exc}). Run from the "
            f"folder that holds {module_name.replace('.', '/')}.py, or install its package."
        ) from exc
    finally:
        if added:
            sys.path.remove(cwd)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(f"--model {spec!r}: {module_name!r} has no {attr!r}.{hint}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(
            f"--model {spec!r}: {attr!r} is a {type(obj).__name__}, not a class or function "
            f"returning an nn.Module."
        )
    return obj


def _build_from_import(spec: str, kwargs: dict) -> nn.Module:
    factory = _import_factory(spec)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise TypeError(
            f"--model {spec!r}: calling it with {kwargs} failed ({exc}); pass the arguments "
            f"it takes (CLI: --model-kwargs)."
        ) from exc
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"--model {spec!r} returned a {type(model).__name__}; the factory must return a "
            f"torch.nn.Module."
        )
    return model


def _tag_weights(model: nn.Module, checkpoint, *, pretrained: bool) -> nn.Module:
    """Record on the model where its weights came from (extraction copies it into ``meta``)."""
    if pretrained:
        weights = "pretrained"
    elif checkpoint is not None:
        weights = f"checkpoint {Path(checkpoint).name}"
    else:
        weights = "random"
    model.concept_probe_weights = weights
    return model


def load_vision_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | os.PathLike | None = None,
    num_classes: int | None = None,
    strip_prefix: str | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a vision model by timm name or import string, with random or loaded weights.

    Parameters
    ----------
    name : str
        A timm model name, e.g. ``"resnet18"`` or ``"vit_small_patch16_224.augreg_in21k"``,
        or an import string ``"package.module:factory"``: a class or function returning an
        ``nn.Module``, imported from the current directory or an installed package.
    pretrained : bool, default=False
        Download (or take from the local Hugging Face cache) the pretrained weights of a timm
        model. Offline and not cached, this fails at once with
        :class:`PretrainedWeightsUnavailableError`.
    checkpoint : path, optional
        Local weights (``.safetensors``, or a weights-only ``.pth`` / ``.pt`` / ``.bin``
        state_dict, possibly wrapped in ``{"state_dict": ...}``), loaded strictly. A torch file
        that needs unpickling Python objects is refused (:class:`UnsafeCheckpointError`).
    num_classes : int, optional
        Size of the classifier head; for a timm model with a checkpoint it is read from the
        checkpoint when not given.
    strip_prefix : str, optional
        Remove this prefix (e.g. ``"model."``) from the checkpoint's keys before loading.
    **kwargs
        Passed to ``timm.create_model`` (e.g. ``img_size=``, ``stem_width=``) or to the factory.

    Returns
    -------
    nn.Module
        In eval mode. When the checkpoint records its preprocessing (input size, mean, std,
        ...), :func:`extract_image_activations` warns if the one in use differs.

    Raises
    ------
    ValueError
        Unknown model name (with close matches), module or factory not importable,
        unreadable checkpoint.
    CheckpointMismatchError
        The checkpoint's keys or shapes do not fit the model (one line, with a hint).
    UnsafeCheckpointError
        A checkpoint that needs unpickling arbitrary objects.
    FileNotFoundError
        If ``checkpoint`` does not exist.
    PretrainedWeightsUnavailableError
        ``pretrained=True`` with no network and nothing in the local cache.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a timm model name or 'module:factory' (str); got {name!r}.")
    if pretrained and checkpoint is not None:
        raise ValueError(
            "pass either pretrained=True (weights from the Hugging Face Hub) or checkpoint= "
            "(local weights), not both."
        )
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint file {str(checkpoint)!r} does not exist.")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if is_import_string(name):
        if pretrained:
            raise ValueError(
                f"pretrained=True downloads timm weights; {name!r} is an import string. Load "
                f"its weights with checkpoint=... (CLI: --checkpoint PATH)."
            )
        model = _build_from_import(name, kwargs)
        if checkpoint is not None:
            load_checkpoint_into(model, checkpoint, strip_prefix=strip_prefix, what=repr(name))
        return _tag_weights(model.eval(), checkpoint, pretrained=False)

    timm = _import_timm()
    if not timm.is_model(name):
        arch = name.split(".", 1)[0]
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"{name!r} is not a timm model.{hint} List names with timm.list_models('*pattern*'), "
            f"or name your own model as 'package.module:factory'."
        )
    if strip_prefix is not None and checkpoint is None:
        raise ValueError("strip_prefix applies to checkpoint keys; pass checkpoint= too.")

    def create(**kw):
        try:
            return timm.create_model(name, pretrained=False, **kw)
        except TypeError as exc:
            raise TypeError(
                f"timm model {name!r} does not take these arguments {kw} ({exc}); pass the ones "
                f"it takes (CLI: --model-kwargs)."
            ) from exc

    if checkpoint is not None:
        path = Path(checkpoint)
        sd, _ = read_checkpoint(path)
        sd = _strip(sd, strip_prefix)
        model = create(**kwargs)
        if num_classes is None:
            head = (
                model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
            )
            w = sd.get(f"{head}.weight") if isinstance(head, str) else None
            own = dict(model.state_dict()).get(f"{head}.weight") if isinstance(head, str) else None
            if w is not None and own is not None and w.shape[0] != own.shape[0]:
                kwargs["num_classes"] = int(w.shape[0])
                model = create(**kwargs)
        load_checkpoint_into(model, path, strip_prefix=strip_prefix, what=f"timm model {name!r}")
        return _tag_weights(model.eval(), checkpoint, pretrained=False)

    if not pretrained:
        return _tag_weights(create(**kwargs).eval(), None, pretrained=False)

    offline_env = _offline_env()
    if offline_env or not _hub_reachable():
        reason = (
            "HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set"
            if offline_env
            else f"{_hub_host()[0]} cannot be reached (no network)"
        )
        try:
            with _hub_offline():  # the local cache only: fails in well under a second
                return _tag_weights(
                    timm.create_model(name, pretrained=True, **kwargs).eval(), None, pretrained=True
                )
        except Exception as exc:  # timm/huggingface_hub raise many types when offline
            raise PretrainedWeightsUnavailableError(
                f"cannot load pretrained weights for {name!r}: {reason} and they are not in the "
                f"local Hugging Face cache. Download them on a machine with internet access "
                f"(e.g. timm.create_model({name!r}, pretrained=True) and save model.state_dict() "
                f"with safetensors.torch.save_file), copy the file here, and load it with "
                f"load_vision_model({name!r}, checkpoint='path/to/weights.safetensors')."
            ) from exc
    return _tag_weights(
        timm.create_model(name, pretrained=True, **kwargs).eval(), None, pretrained=True
    )


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
    if local and not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"model folder {text!r} has no config.json, so it is not a saved transformers "
            f"model; pass the folder written by model.save_pretrained(folder) and "
            f"tokenizer.save_pretrained(folder) (config.json, the weights, tokenizer.json)."
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
