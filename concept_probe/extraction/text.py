"""Language front end: texts in, one row per token out."""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_positive_int, fail, is_int
from ..errors import TruncationWarning
from . import _engine
from .activations import Activations

__all__ = [
    "DEFAULT_MAX_LENGTH",
    "extract_text_activations",
    "model_max_length",
    "read_texts",
    "resolve_max_length",
]

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

#: Tokens per text (special tokens included) that :func:`extract_text_activations` keeps
#: by default; longer texts are cut there, with a :class:`~concept_probe.errors.TruncationWarning`.
DEFAULT_MAX_LENGTH = 128


def model_max_length(model: nn.Module) -> int | None:
    """The most tokens per text the model's position embeddings take, or None if unknown.

    Read from ``model.config.max_position_embeddings`` (GPT-2's ``n_positions`` too). In
    RoBERTa-style embeddings the positions start after the padding index, so those
    ``padding_idx + 1`` positions are not available to tokens (RoBERTa: 514 - 2 = 512).
    """
    n = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if not is_int(n) or n <= 0:
        return None
    emb = getattr(model, "embeddings", None)
    pad = getattr(emb, "padding_idx", None)
    if is_int(pad) and pad >= 0 and hasattr(emb, "position_embeddings"):
        n -= int(pad) + 1
    return int(n) if n > 0 else None


def resolve_max_length(model: nn.Module, max_length: Any, tokenizer: Any = None) -> int:
    """The ``max_length`` an extraction uses: the given one checked, or the default.

    The default is :data:`DEFAULT_MAX_LENGTH`, or the model's limit where that is smaller.
    """
    if max_length is None:
        limit = model_max_length(model)
        return DEFAULT_MAX_LENGTH if limit is None else min(DEFAULT_MAX_LENGTH, limit)
    return check_max_length(model, max_length, tokenizer=tokenizer)


def check_max_length(
    model: nn.Module, max_length: Any, name: str = "max_length", tokenizer: Any = None
) -> int:
    """``max_length`` as an int, refused when the model cannot take that many tokens.

    With ``tokenizer``, also refused when it leaves no room for text after the special
    tokens the tokenizer adds (the tokenizer would then not truncate at all).
    """
    max_length = check_positive_int(max_length, name)
    count = getattr(tokenizer, "num_special_tokens_to_add", None)
    n_special = count(pair=False) if callable(count) else 0
    if is_int(n_special) and max_length <= n_special:
        fail(
            name,
            f"at least {n_special + 1}: the {n_special} special tokens "
            f"{type(tokenizer).__name__} adds to each text, and one token of the text",
            max_length,
        )
    limit = model_max_length(model)
    if limit is not None and max_length > limit:
        fail(
            name,
            f"at most {limit}, the number of token positions {_engine.model_name(model)} "
            f"has (config.max_position_embeddings)",
            max_length,
            f"Pass {name}{' ' if name.startswith('-') else '='}{limit} or less, and split texts "
            f"that are longer than that into several.",
        )
    return max_length


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
    max_length: int | None = None,
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
    max_length : int, optional
        Tokens kept per text, special tokens included, at most the model's position limit
        (:func:`model_max_length`, e.g. 512 for BERT; a larger value is refused). Default:
        ``DEFAULT_MAX_LENGTH`` (128), or the model's limit where that is smaller. Longer texts
        are cut there, with one :class:`~concept_probe.errors.TruncationWarning` saying how many
        of them and how long the longest is; ``acts.meta['n_truncated']`` counts them and
        ``acts.meta['longest_tokens']`` is the longest text's length uncut.
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
    max_length = resolve_max_length(model, max_length, tokenizer)
    run = _engine.setup(model, layer, device)
    dev = run.device
    items, ids, description = read_texts(texts)
    accepted = _accepted_inputs(model)
    rows = _TextRows(tokenizer)

    def full_lengths(chunk: list[str]) -> list[int]:
        # verbose=False: no "sequence length is longer than the maximum" log line per text
        enc = tokenizer(chunk, truncation=False, verbose=False)
        return [len(x) for x in enc["input_ids"]]

    def counted(lengths: list[int]) -> dict:
        # texts cut at max_length, and the most tokens one has uncut (special tokens included)
        return {
            "n_truncated": sum(n > max_length for n in lengths),
            "longest_tokens": max(lengths, default=0),
        }

    def stats_of_shard(strings: dict) -> list[dict]:
        # a shard written before the batches' stats were kept: count the texts it holds
        done = strings.get("texts") or []
        return [counted(full_lengths(done[s : s + 256])) for s in range(0, len(done), 256)]

    def batches(start: int) -> Iterator[_engine.Batch]:
        with _padding_ready(tokenizer):
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
                # Only a text that fills max_length can have been cut: tokenize those again
                # uncut to know (and to know how long they are).
                lengths = mask.sum(dim=1).tolist()
                full = [j for j, n in enumerate(lengths) if n >= max_length]
                if full:
                    for j, n in zip(full, full_lengths([chunk[j] for j in full]), strict=True):
                        lengths[j] = n
                # kept with the batch's shard, so a resumed run counts every text
                stats = counted(lengths)
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
                    stats=stats,
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
        return {"grid": None, "meta": {}}

    def stats_meta(stats: list[dict]) -> dict:
        return {
            "n_truncated": sum(int(st["n_truncated"]) for st in stats),
            "longest_tokens": max((int(st["longest_tokens"]) for st in stats), default=0),
        }

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
        stats_meta=stats_meta,
        stats_of_shard=stats_of_shard,
    )
    result = _engine.run(plan, out, run.single)
    first = result if run.single else result[run.layers[0]]
    _warn_truncated(first.meta, len(items), max_length, model_max_length(model))
    return result


def _warn_truncated(meta: dict, n_texts: int, max_length: int, limit: int | None) -> None:
    """One :class:`TruncationWarning` for the whole extraction when any text was cut."""
    n = int(meta.get("n_truncated", 0) or 0)
    if not n:
        return
    longest = int(meta.get("longest_tokens", 0) or 0)  # 0: a folder from before it was kept
    message = (
        f"{n} of {n_texts} texts are longer than max_length={max_length} tokens and were cut "
        f"there{f' (the longest has {longest} tokens)' if longest else ''}: their later tokens "
        f"have no rows."
    )
    if limit is not None and (longest > limit or not longest):
        message += (
            f" This model takes at most {limit} tokens: pass max_length={limit} (CLI: "
            f"--max-length {limit}) and split longer texts into several."
        )
    elif longest:
        message += f" To keep every token, pass max_length={longest} (CLI: --max-length {longest})."
    else:
        message += " Pass a larger max_length (CLI: --max-length N) to keep more tokens."
    warnings.warn(message, TruncationWarning, stacklevel=3)
