"""Your own model at the command line: loading what --model names, and its preprocessing.

--model is a timm name or your own ``package.module:factory``, with --model-kwargs and
--checkpoint; --input-size and the rest set its preprocessing; --quiet also silences the
third-party bars of model loading.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager

from .flags import UsageError


def _load_vision(args, warn_random: bool = True):
    from ..extraction import load_vision_model

    if args.checkpoint is not None and not args.checkpoint.is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file.")
    pretrained = getattr(args, "pretrained", False)
    if warn_random and not pretrained and args.checkpoint is None:
        print(
            f"note: --model {args.model} without --pretrained or --checkpoint has random "
            f"weights; its concepts say little about a trained network.",
            file=sys.stderr,
        )
    strip = getattr(args, "strip_prefix", None)
    if strip is not None and args.checkpoint is None:
        raise UsageError("--strip-prefix applies to checkpoint keys; give --checkpoint too.")
    return load_vision_model(
        args.model,
        pretrained=pretrained,
        checkpoint=args.checkpoint,
        strip_prefix=strip,
        **_model_kwargs(args),
    )


def _default_layer(model) -> str:
    info = getattr(model, "feature_info", None)
    try:
        return info[-1]["module"]
    except (TypeError, KeyError, IndexError):
        raise UsageError(
            "--layer is required for this model (it has no timm feature_info to pick the last "
            "stage from); list the names with 'concept-probe layers --model ...'."
        ) from None


def _json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _model_kwargs(args) -> dict:
    """--model-kwargs as a dict: key=value pairs (JSON values) or one JSON object."""
    items = getattr(args, "model_kwargs", None) or []
    if len(items) == 1 and items[0].lstrip().startswith("{"):
        value = _json_value(items[0])
        if not isinstance(value, dict):
            raise UsageError(
                f"--model-kwargs {items[0]!r} is not a valid JSON object; write "
                f"'{{\"num_classes\": 10}}' or num_classes=10."
            )
        return value
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(
                f"--model-kwargs {item!r} is not key=value (e.g. num_classes=10) nor a JSON object."
            )
        out[key] = _json_value(value)
    return out


def _image_only_flags(args) -> list[tuple[str, bool]]:
    return [
        ("--model-kwargs", bool(getattr(args, "model_kwargs", None))),
        ("--strip-prefix", getattr(args, "strip_prefix", None) is not None),
        ("--input-size", args.input_size is not None),
        ("--mean", args.mean is not None),
        ("--std", args.std is not None),
        ("--interpolation", args.interpolation is not None),
        ("--crop-pct", args.crop_pct is not None),
    ]


def _preprocessing(args, model) -> dict:
    """The --input-size/--mean/--std/--interpolation/--crop-pct given, as keyword arguments."""
    from ..extraction._vision_inputs import _is_timm_model

    size = args.input_size
    if size is not None and len(size) not in (1, 2):
        raise UsageError(f"--input-size takes N or H W; got {' '.join(map(str, size))}.")
    given = {
        "input_size": (size[0] if len(size) == 1 else tuple(size)) if size else None,
        "mean": args.mean,
        "std": args.std,
        "interpolation": args.interpolation,
        "crop_pct": args.crop_pct,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if not _is_timm_model(model) and "input_size" not in given:
        raise UsageError(
            f"--model {args.model} is not a timm model, so its preprocessing is unknown: give "
            f"--input-size (and --mean, --std, --interpolation, --crop-pct when they are not "
            f"ImageNet's 0.485 0.456 0.406 / 0.229 0.224 0.225, bicubic, 0.875)."
        )
    return given


def _layer_arg(layers: list[str] | None):
    """--layer given once: that name; several: the list; none: None."""
    if not layers:
        return None
    return layers[0] if len(layers) == 1 else list(layers)


@contextmanager
def _third_party_bars_off(quiet: bool, transformers: bool = False):
    """--quiet: no progress bars from transformers (weight loading), huggingface_hub, tqdm.

    ``transformers``: also silence transformers' own bars (imports it; for --texts).
    """
    if not quiet:
        yield
        return
    import os

    saved = {k: os.environ.get(k) for k in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    os.environ.update(TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    restore = []
    try:
        from huggingface_hub import utils as hub_utils

        if not hub_utils.are_progress_bars_disabled():
            hub_utils.disable_progress_bars()
            restore.append(hub_utils.enable_progress_bars)
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        pass
    if transformers or "transformers" in sys.modules:
        try:
            from transformers.utils import logging as tf_logging
        except ImportError:
            tf_logging = None
        if tf_logging is not None and tf_logging.is_progress_bar_enabled():
            tf_logging.disable_progress_bar()
            restore.append(tf_logging.enable_progress_bar)
    try:
        yield
    finally:
        for undo in restore:
            undo()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
