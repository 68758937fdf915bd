"""Language front end: texts in, one row per token out."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_positive_int
from . import _engine
from .activations import Activations

__all__ = ["extract_text_activations", "read_texts"]

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def read_texts(texts: Any) -> tuple[list[str], list[str], str]:
    """Return ``(texts, sample_ids, description)`` from a list of str or a text file path.

    A file holds one text per line; blank lines are skipped and each sample id is
    ``"path:line_number"``.
    """
    if isinstance(texts, (str, os.PathLike)):
        path = Path(texts)
        if not path.is_file():
            if isinstance(texts, str) and (not path.suffix or "\n" in texts or " " in texts):
                raise ValueError(
                    f"texts is a str that is not an existing file: {texts[:60]!r}. Pass a list of "
                    f"texts (for one text: [text]) or the path of a file with one text per line."
                )
            raise FileNotFoundError(f"text file {str(path)!r} does not exist.")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise ValueError(
                f"text file {str(path)!r} is not UTF-8 ({exc}); convert it to UTF-8."
            ) from exc
        out, ids = [], []
        for i, line in enumerate(lines, start=1):
            if line.strip():
                out.append(line)
                ids.append(f"{path}:{i}")
        if not out:
            raise ValueError(f"text file {str(path)!r} has no non-blank lines; nothing to extract.")
        return out, ids, f"file {str(path)!r} ({len(out)} lines)"
    if isinstance(texts, Sequence) and not isinstance(texts, (bytes, bytearray)):
        out = list(texts)
        if not out:
            raise ValueError("texts is empty; nothing to extract.")
        bad = next((t for t in out if not isinstance(t, str)), None)
        if bad is not None:
            raise TypeError(f"texts must hold only str; found {type(bad).__name__} {bad!r}.")
        return out, [f"text[{i}]" for i in range(len(out))], f"{len(out)} texts"
    raise TypeError(
        f"texts must be a list of str or the path of a text file (one text per line); got "
        f"{type(texts).__name__}."
    )


@contextmanager
def _padding_ready(tokenizer):
    """Right padding with some pad token for the duration (GPT-2 tokenizers have none).

    Padding never becomes rows (the attention mask drops it), so which token pads does not
    matter; right padding keeps every real token at its unpadded position.
    """
    old_pad, old_side = tokenizer.pad_token, getattr(tokenizer, "padding_side", "right")
    try:
        if tokenizer.pad_token is None:
            for cand in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
                if cand is not None:
                    tokenizer.pad_token = cand
                    break
            else:
                raise ValueError(
                    f"{type(tokenizer).__name__} has no pad, eos, unk or bos token to pad batches "
                    f"with; set tokenizer.pad_token, or use batch_size=1."
                )
        tokenizer.padding_side = "right"
        yield tokenizer
    finally:
        tokenizer.padding_side = old_side
        if old_pad is None:
            tokenizer.pad_token = None


def _accepted_inputs(model: nn.Module) -> set[str] | None:
    """Names of ``model.forward`` parameters, or None if it takes ``**kwargs``."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return set(params)


def _tokenizer_name(tokenizer) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


class _TextRows:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.n_features: dict[str, int] = {}

    def __call__(self, name: str, out: torch.Tensor, batch: _engine.Batch) -> _engine.Rows:
        ids = batch.extra["input_ids"]
        if out.ndim != 3 or out.shape[:2] != ids.shape:
            raise ValueError(
                f"layer {name!r} outputs shape {tuple(out.shape)}, but a per-token layer must "
                f"output (batch, tokens, features) = ({ids.shape[0]}, {ids.shape[1]}, d). Pick "
                f"a layer such as a transformer block (see list_layers(model, "
                f"tokenizer(['a text'], return_tensors='pt')))."
            )
        C = out.shape[2]
        if self.n_features.setdefault(name, C) != C:  # pragma: no cover - model invariant
            raise ValueError(f"layer {name!r} changed width between batches.")
        keep = batch.extra["keep"]  # bool (b, T) on CPU
        where = torch.nonzero(keep)  # (r, 2): (text, token), text-major then token order
        i, t = where[:, 0], where[:, 1]
        A = out[i.to(out.device), t.to(out.device)].to("cpu", torch.float32).numpy()
        tokens = self.tokenizer.convert_ids_to_tokens(ids[i, t].tolist())
        spans = batch.extra["offsets"][i, t].numpy().astype(np.int64)
        return _engine.Rows(
            A,
            (i + batch.start).numpy().astype(np.int64),
            t.numpy().astype(np.int64),
            char_spans=spans.reshape(-1, 2),
            tokens=[str(tok) for tok in tokens],
        )


def extract_text_activations(
    model: nn.Module,
    tokenizer: Any,
    layer: str | Sequence[str],
    texts: Sequence[str] | str | os.PathLike,
    *,
    batch_size: int = 16,
    max_length: int = 128,
    include_special: bool = False,
    device: str | torch.device = "cpu",
    out: str | os.PathLike | None = None,
    progress: bool = True,
) -> Activations | dict[str, Activations]:
    """Activations of one or several layers of a language model, one row per token.

    Texts are tokenized in batches (right-padded; padding never becomes rows), run through the
    model once per batch under ``torch.inference_mode``, and the hidden state of every kept
    token is a row: row (text i, token t) is the layer's output at ``[i, t]``.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face model (e.g. from :func:`load_text_model`) or any module taking
        ``input_ids`` / ``attention_mask``.
    tokenizer : transformers fast tokenizer
        Must be a fast tokenizer (``tokenizer.is_fast``): character spans come from its
        offsets mapping. Tokenizers without a pad token (GPT-2) are handled.
    layer : str or list of str
        Dotted module name(s), e.g. ``"encoder.layer.3"`` (BERT) or ``"h.3"`` (GPT-2); see
        :func:`list_layers`.
    texts : list of str, or path of a text file
        A file holds one text per line (blank lines are skipped).
    batch_size : int, default=16
    max_length : int, default=128
        Longer texts are truncated (``acts.meta['n_truncated']`` counts them).
    include_special : bool, default=False
        Keep rows for special tokens ([CLS], [SEP], <s>, ...).
    device : str or torch.device, default='cpu'
    out : path, optional
        Stream to this folder, resumably (see :func:`extract_image_activations`).
    progress : bool, default=True

    Returns
    -------
    Activations (``kind='text'``), or dict of str to Activations when ``layer`` is a list
        ``position`` holds token indices, ``tokens`` the token strings, ``char_spans`` the
        ``[start, end)`` characters of each token in its text.
    """
    if not callable(tokenizer) or not hasattr(tokenizer, "convert_ids_to_tokens"):
        raise TypeError(
            f"tokenizer must be a Hugging Face tokenizer; got {type(tokenizer).__name__}."
        )
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            f"{type(tokenizer).__name__} is a slow (Python) tokenizer; character spans need a "
            f"fast tokenizer's offsets mapping. Load it with AutoTokenizer.from_pretrained(path, "
            f"use_fast=True) (or use load_text_model)."
        )
    batch_size = check_positive_int(batch_size, "batch_size")
    max_length = check_positive_int(max_length, "max_length")
    run = _engine.setup(model, layer, device)
    dev = run.device
    items, ids, description = read_texts(texts)
    accepted = _accepted_inputs(model)
    rows = _TextRows(tokenizer)
    n_truncated = [0]

    def batches(start: int) -> Iterator[_engine.Batch]:
        with _padding_ready(tokenizer):
            if start:  # resuming: count truncations among the texts already done
                for s in range(0, start, 256):
                    done = items[s : min(s + 256, start)]
                    enc = tokenizer(
                        done,
                        truncation=True,
                        max_length=max_length,
                        return_offsets_mapping=True,
                    )
                    n_truncated[0] += sum(
                        bool(o) and max(e for _, e in o) < len(text.rstrip())
                        for o, text in zip(enc["offset_mapping"], done, strict=True)
                    )
            for s in range(start, len(items), batch_size):
                chunk = items[s : s + batch_size]
                enc = tokenizer(
                    chunk,
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                    return_offsets_mapping=True,
                    return_special_tokens_mask=True,
                )
                mask = enc["attention_mask"].bool()
                special = enc["special_tokens_mask"].bool()
                keep = mask if include_special else mask & ~special
                offsets = enc["offset_mapping"]
                # A text was truncated if its last kept character ends before its last
                # non-blank character.
                ends = (offsets[..., 1] * mask).amax(dim=1)
                n_truncated[0] += sum(
                    int(e) < len(text.rstrip()) for e, text in zip(ends, chunk, strict=True)
                )
                inputs = {
                    k: enc[k].to(dev)
                    for k in _MODEL_INPUTS
                    if k in enc and (accepted is None or k in accepted)
                }
                yield _engine.Batch(
                    start=s,
                    inputs=inputs,
                    ids=ids[s : s + len(chunk)],
                    texts=list(chunk),
                    extra={"input_ids": enc["input_ids"], "keep": keep, "offsets": offsets},
                )

    meta = {
        **_engine.base_meta(model, "text"),
        "tokenizer": _tokenizer_name(tokenizer),
        "input": description,
        "max_length": max_length,
        "include_special": bool(include_special),
        "dtype": "float32",
    }

    def layer_info(name: str) -> dict:
        return {"grid": None, "meta": {"n_truncated": n_truncated[0]}}

    fingerprint = {}
    if out is not None:
        fingerprint = _engine.json_safe(
            {
                **_engine.base_fingerprint(
                    "text", model, _engine.strings_fingerprint(items), len(items)
                ),
                "tokenizer": _tokenizer_name(tokenizer),
                "vocab_size": len(tokenizer),
                "max_length": max_length,
                "include_special": bool(include_special),
            }
        )
    plan = _engine.Plan(
        model=model,
        layers=run.layers,
        kind="text",
        device=dev,
        n_samples=len(items),
        batches=batches,
        to_rows=rows,
        layer_info=layer_info,
        expected_rows=lambda name: None,
        meta=meta,
        fingerprint=fingerprint,
        progress=progress,
        unit="text",
        batch_size=batch_size,
    )
    return _engine.run(plan, out, run.single)
