"""Reading images into 8-bit RGB: one rule per PIL pixel mode, and the checks made up front.

:func:`to_rgb` converts any PIL image (16-bit, ``I`` and ``F`` samples, alpha composited on
white); :func:`check_pil_images` refuses the in-memory images no rule converts, and
:func:`check_image_files` finds the unreadable image files, before the first forward pass.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SkippedInputsWarning, UnreadableImageError

# ------------------------------------------------------------------------ pixel modes
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class _ModeError(ValueError):
    """A pixel mode (or value range) with no sane conversion to 8-bit RGB."""


def to_rgb(im):
    """An 8-bit RGB copy of any PIL image, each mode read by one documented rule.

    - 16-bit integer modes (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``): full-range 16-bit
      samples, ``v * 255 / 65535`` rounded (not clipped to 8 bits);
    - ``I`` (32-bit integers): read as 16-bit samples too (what 16-bit grayscale files decode
      to); values outside 0..65535 are refused;
    - ``F`` (32-bit floats): read as 0..1 (the float image convention), ``v * 255`` rounded;
      values outside [0, 1] (or not finite) are refused;
    - transparency (``RGBA``, ``LA``, ``PA``, premultiplied ``RGBa`` / ``La``, a palette or
      grey/RGB image with a transparent colour): composited on white;
    - every other mode (``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``)
      by Pillow's own conversion to RGB (an embedded ICC profile is not applied).

    Raises ``ValueError`` naming the mode, the values and the fix when a rule refuses.
    """
    from PIL import Image

    mode = im.mode
    if mode == "RGB" and "transparency" not in im.info:
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im)
        if a.ndim != 2:  # pragma: no cover - these modes are single-channel
            raise _ModeError(f"mode {mode!r} with shape {a.shape} is not a single-channel image")
        a = a.astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if mode == "F":
            if not (np.isfinite(a).all() and lo >= 0 and hi <= 1):
                raise _ModeError(
                    f"a mode 'F' (32-bit float) image is read as values in [0, 1], but this "
                    f"one holds values in [{lo:g}, {hi:g}]. Rescale it to [0, 1] first, or "
                    f"save it as an 8-bit or 16-bit image"
                )
            g = a * 255.0
        else:
            if lo < 0 or hi > 65535:
                raise _ModeError(
                    f"a mode {mode!r} (integer) image is read as 16-bit samples (0..65535), "
                    f"but this one holds values in [{lo:g}, {hi:g}]. Rescale it to 0..65535 "
                    f"(or to 8 bits: Image.fromarray(array.astype('uint8'))) first"
                )
            g = a * (255.0 / 65535.0)
        return Image.fromarray(np.clip(np.rint(g), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBa", "La"):  # premultiplied alpha: on white, out = c + (255 - alpha)
        a = np.asarray(im).astype(np.int32)
        out = np.clip(a[..., :-1] + (255 - a[..., -1:]), 0, 255).astype(np.uint8)
        out = np.repeat(out, 3, axis=-1) if out.shape[-1] == 1 else out
        return Image.fromarray(out, "RGB")
    if mode in _ALPHA_MODES or "transparency" in im.info:
        try:
            rgba = im.convert("RGBA")
        except ValueError as exc:
            raise _ModeError(f"mode {mode!r} with transparency: {exc}") from exc
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as exc:
        raise _ModeError(
            f"Pillow cannot convert mode {mode!r} to RGB ({exc}); convert the image to RGB "
            f"yourself first"
        ) from exc


def _item_rgb(im, where: str):
    """:func:`to_rgb` of an in-memory image; a refusal names it (``images[3]``, ``dataset[3]``)."""
    try:
        return to_rgb(im)
    except _ModeError as exc:
        raise ValueError(f"{where} ({_described(im)}): {exc}.") from None


def _described(im) -> str:
    return f"a PIL image of {im.size[0]} x {im.size[1]} px"


# Modes that a rule may refuse (their value range decides); every other mode converts.
_REFUSABLE = ("I", "F")


def check_pil_images(items: list) -> None:
    """Refuse, before any forward pass, the in-memory images no rule converts (all listed)."""
    problems = []
    for i, im in enumerate(items):
        if im.mode in _REFUSABLE:
            try:
                to_rgb(im)
            except _ModeError as exc:
                problems.append(f"images[{i}] ({_described(im)}): {exc}")
    if len(problems) == 1:
        raise ValueError(f"{problems[0]}.")
    if problems:
        shown = "; ".join(problems[:10]) + (
            f"; and {len(problems) - 10} more" if len(problems) > 10 else ""
        )
        raise ValueError(
            f"{len(problems)} of the {len(items)} images cannot be read into 8-bit RGB: {shown}."
        )


# ------------------------------------------------------------------------ image files
_SKIP_HINT = "pass on_error='skip' (CLI: --skip-unreadable) to leave unreadable files out"


def _reason(exc: BaseException, path: Path) -> str:
    """A short, path-free reason for a failed read (Pillow's messages repeat the path)."""
    msg = str(exc)
    for p in (repr(str(path)), str(path)):
        msg = msg.replace(p, "")
    msg = " ".join(msg.replace("''", "").split()).rstrip(" .:")
    return msg or type(exc).__name__


def _read_problem(path: Path, full: bool) -> str | None:
    """Why ``path`` cannot be read (None: it can).

    ``full=False`` is the cheap check (the file exists and its header names a known image
    format and mode); ``full=True`` decodes it whole, as extraction will.
    """
    from PIL import Image

    if not path.is_file():
        return "file not found"
    try:
        with Image.open(path) as im:
            if full:
                im.load()
                to_rgb(im)
    except _ModeError as exc:
        return str(exc)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        return _reason(exc, path)
    return None


def _open_image(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im)
    except _ModeError as exc:
        raise UnreadableImageError(f"image file {str(path)!r}: {exc}; or {_SKIP_HINT}.") from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise UnreadableImageError(
            f"could not decode image file {str(path)!r} ({_reason(exc, path)}). Remove or "
            f"replace it and run the extraction again, or {_SKIP_HINT}."
        ) from exc


def _shown(problems: list[tuple[Path, str]], limit: int = 10) -> str:
    shown = "; ".join(f"{str(p)!r} ({r})" for p, r in problems[:limit])
    more = len(problems) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


def check_image_files(paths: list[Path], on_error: str, where: str) -> tuple[list[int], list[dict]]:
    """The indices of the readable files in ``paths``, and the skipped ones as records.

    ``on_error='raise'`` runs the cheap check on every file (the header, so empty files,
    non-images and unknown modes are all found before the first forward pass) and raises one
    :class:`UnreadableImageError` listing every file found; a file that fails only when
    decoded whole raises when it is read, naming it. ``on_error='skip'`` decodes every file
    up front (so the inputs, their indices and labels are fixed before extraction starts) and
    leaves out the unreadable ones, each listed once in a :class:`SkippedInputsWarning` and
    in the returned records ``{'path', 'reason'}``.
    """
    full = on_error == "skip"
    problems = []
    keep = []
    for i, p in enumerate(paths):
        why = _read_problem(p, full)
        if why is None:
            keep.append(i)
        else:
            problems.append((p, why))
    if not problems:
        return keep, []
    if not full:
        raise UnreadableImageError(
            f"could not read {len(problems)} of {len(paths)} image files in {where}: "
            f"{_shown(problems)}. Remove or replace them, or {_SKIP_HINT}."
        )
    if not keep:
        raise UnreadableImageError(
            f"none of the {len(paths)} image files in {where} can be read: {_shown(problems)}."
        )
    warnings.warn(
        f"skipped {len(problems)} unreadable image file(s) of the {len(paths)} in {where}: "
        f"{_shown(problems)} (all listed in acts.meta['skipped'] and in the report).",
        SkippedInputsWarning,
        stacklevel=4,
    )
    return keep, [{"path": str(p), "reason": r} for p, r in problems]


def _is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a core dependency
        return False
    return isinstance(x, Image.Image)
