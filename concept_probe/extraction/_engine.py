"""The extraction loop shared by the vision and text front ends.

A front end supplies batches (model inputs plus per-sample data) and a function that turns a
layer's output into rows; this module runs the forward passes under one
:func:`~concept_probe.extraction.hooks.capture_layers` block, collects the rows in memory or
streams them to disk in resumable shards, and builds the :class:`Activations`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._torch_utils import resolve_device
from ..errors import ForwardPassError
from . import _sharded, _storage
from .activations import Activations
from .hooks import capture_layers, resolve_layers

# Rows are buffered up to about this many bytes before a shard is written to disk (when
# streaming with out=); the same batches close a shard for every layer.
SHARD_BYTES = 32 * 2**20
# After the first batch, stop each forward pass once every captured layer has run (the rest of
# the model cannot change the captured outputs). A switch for benchmarks and debugging.
STOP_EARLY = True


@dataclass
class Batch:
    """One batch of inputs and the per-sample data that goes with it."""

    start: int  # global index of the first sample
    inputs: Any  # Tensor or dict of tensors, on the device
    ids: list[str]
    labels: np.ndarray | None = None  # int64 (b,), -1 = none
    images: np.ndarray | None = None  # uint8 (b, H, W, 3)
    texts: list[str] | None = None
    extra: dict = field(default_factory=dict)  # front-end specific (token ids, offsets, ...)
    # What the batch adds to the whole extraction's metadata (JSON-ready: image sizes, a
    # classifier's hits, texts cut): saved with its shard, so a resumed run counts every batch.
    stats: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return len(self.ids)

    def per_sample(self) -> Batch:
        """Return the batch without its model inputs: what sinks keep (inputs would pile up)."""
        return Batch(
            self.start, None, self.ids, self.labels, self.images, self.texts, stats=self.stats
        )


@dataclass
class Rows:
    """Rows of one layer from one batch (CPU numpy arrays)."""

    A: np.ndarray  # float32 (r, C)
    sample: np.ndarray  # int64 (r,)
    position: np.ndarray | None = None
    char_spans: np.ndarray | None = None
    tokens: list[str] | None = None

    @property
    def nbytes(self) -> int:
        return self.A.nbytes + self.sample.nbytes


def tensor_fingerprint(x: torch.Tensor) -> str:
    """A cheap content hash of a tensor: shape, dtype and up to 65,536 evenly spaced values."""
    flat = x.detach().reshape(-1)
    step = max(1, flat.numel() // 65536)
    h = hashlib.sha256(f"{tuple(x.shape)}{x.dtype}".encode())
    h.update(flat[::step].cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def model_fingerprint(model: nn.Module) -> str:
    """Class, parameter names/shapes and a strided sample of every weight and buffer."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        h.update(name.encode())
        h.update(tensor_fingerprint(t.float() if t.is_floating_point() else t).encode())
    return h.hexdigest()[:16]


def strings_fingerprint(items: list[str]) -> str:
    return hashlib.sha256("\n".join(items).encode("utf-8")).hexdigest()[:16]


def safe_dirname(layer: str) -> str:
    """Folder name for one layer's output when several layers stream under one ``out``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer) or "_"


def model_name(model: nn.Module) -> str:
    """A short human name of the model for metadata."""
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and cfg.get("architecture"):
        return str(cfg["architecture"])
    config = getattr(model, "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(model, "name_or_path", None)
    if name:
        return short_model_name(str(name))
    return type(model).__name__


# Folder names that say nothing about which model a local folder holds.
_GENERIC_FOLDERS = {"model", "models", "snapshots", "checkpoint", "checkpoints", "weights", "hf"}


def short_model_name(name: str) -> str:
    """A model's name, not its folder: ``/…/site-packages/gt_minilm/model`` -> ``gt_minilm``.

    A Hugging Face model loaded from a local folder calls itself by that folder's path (often
    deep in ``site-packages`` or the hub cache), which makes a poor report title. A hub id
    (``org/name``) is kept as it is; a hub cache folder gives back its id
    (``…/models--org--name/snapshots/<hash>`` -> ``org/name``); any other path gives its last
    folder that is not a generic one (``model``, ``snapshots``, a commit hash, ...).
    """
    import re
    from pathlib import PurePath

    path = PurePath(name)
    if not (path.is_absolute() or name.startswith((".", "~")) or "\\" in name):
        return name  # a hub id such as "sentence-transformers/all-MiniLM-L6-v2", or a name
    for part in path.parts:
        if part.startswith("models--"):
            return part[len("models--") :].replace("--", "/")
    parts = [part for part in path.parts if part not in (path.anchor, "")]
    while len(parts) > 1 and (
        parts[-1].lower() in _GENERIC_FOLDERS or re.fullmatch(r"[0-9a-f]{16,}", parts[-1])
    ):
        parts.pop()
    return parts[-1] if parts else name


@dataclass(frozen=True)
class Setup:
    """What every front end settles before reading any input."""

    single: bool  # one layer given as a str: return one Activations, not a dict
    layers: list[str]
    device: torch.device


def setup(model: nn.Module, layer: str | Sequence[str], device: str | torch.device) -> Setup:
    """Check the model, the device and the layer names (a typo fails before any input is read)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    single = isinstance(layer, str)
    layers = [layer] if single else list(layer)
    twice = next((name for i, name in enumerate(layers) if name in layers[:i]), None)
    if twice is not None:  # both would stream into one folder and leave it corrupt
        raise ValueError(f"layer lists {twice!r} twice (CLI: --layer); give each layer once.")
    dev = resolve_device(device)
    resolve_layers(model, layers)
    return Setup(single, layers, dev)


def base_meta(model: nn.Module, mode: str) -> dict:
    """The metadata every front end starts from."""
    meta = {"model": model_name(model), "model_class": type(model).__name__, "mode": mode}
    weights = getattr(model, "concept_probe_weights", None)  # set by load_vision_model
    if isinstance(weights, str):
        meta["weights"] = weights
    return meta


def base_fingerprint(front_end: str, model: nn.Module, data: str, n_samples: int | None) -> dict:
    """The part of a resume fingerprint every front end shares (its settings come on top)."""
    return {
        "front_end": front_end,
        "model": model_fingerprint(model),
        "data": data,
        "n_samples": n_samples,
    }


class _ModelOnDevice:
    """Move a model to ``device`` for a block and back to where it was."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device
        p = next(model.parameters(), None)
        self.home = p.device if p is not None else device

    def __enter__(self):
        if self.home != self.device:
            self.model.to(self.device)
        return self.model

    def __exit__(self, *exc):
        if self.home != self.device:
            self.model.to(self.home)


# ---------------------------------------------------------------------------- sinks
_NO_ROWS = np.empty((0, 0), dtype=np.float32)


class _MemorySink:
    """Collects rows and per-sample data in memory.

    A is written into one preallocated tensor when the number of rows is known after the first
    batch (vision), so the peak is A itself rather than A plus a concatenated copy.
    """

    def __init__(self):
        self.buf: torch.Tensor | None = None
        self.at = 0
        self.chunks: list[np.ndarray] = []
        self.rows: list[Rows] = []
        self.samples: list[Batch] = []
        self.images: np.ndarray | None = None  # preallocated (n_samples, H, W, 3)
        self.n_images = 0

    def reserve(
        self, n_rows: int | None, n_features: int, n_samples: int | None, batch: Batch
    ) -> None:
        if n_rows is not None:
            self.buf = torch.empty(n_rows, n_features, dtype=torch.float32)
        if n_samples is not None and batch.images is not None:
            self.images = np.empty((n_samples, *batch.images.shape[1:]), dtype=np.uint8)

    def add(self, batch: Batch, rows: Rows) -> None:
        r = rows.A.shape[0]
        if self.buf is not None and self.at + r <= self.buf.shape[0]:
            self.buf[self.at : self.at + r] = torch.from_numpy(rows.A)
            self.at += r
        else:  # no reservation, or more rows than reserved: keep chunks
            if self.buf is not None:
                self.chunks.append(self.buf[: self.at].numpy())
                self.buf = None
            self.chunks.append(rows.A)
        # Keep no view of rows.A (a view would keep the whole batch array alive).
        self.rows.append(Rows(_NO_ROWS, rows.sample, rows.position, rows.char_spans, rows.tokens))
        kept = batch.per_sample()
        if self.images is not None and batch.images is not None:
            e = self.n_images + batch.size
            if e <= self.images.shape[0] and batch.images.shape[1:] == self.images.shape[1:]:
                self.images[self.n_images : e] = batch.images
                kept.images = None
            else:  # pragma: no cover - more samples than announced: keep per batch
                self.images = None
        self.n_images += batch.size
        self.samples.append(kept)

    def per_sample(self) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
        arrays, strings = _per_sample(self.samples)
        if self.images is not None:
            arrays["images"] = self.images[: self.n_images]
        return arrays, strings

    def parts(self) -> tuple[torch.Tensor, dict[str, np.ndarray], list[str] | None]:
        if self.buf is not None:
            A = self.buf if self.at == self.buf.shape[0] else self.buf[: self.at].clone()
        elif len(self.chunks) == 1:
            A = torch.from_numpy(self.chunks[0])
        else:
            A = torch.from_numpy(np.concatenate(self.chunks))
        self.buf, self.chunks = None, []
        rows = self.rows
        arrays = {"sample": np.concatenate([r.sample for r in rows])}
        if rows[0].position is not None:
            arrays["position"] = np.concatenate([r.position for r in rows])
        if rows[0].char_spans is not None:
            arrays["char_spans"] = np.concatenate([r.char_spans for r in rows])
        tokens = [t for r in rows for t in r.tokens] if rows[0].tokens is not None else None
        return A, arrays, tokens


def _per_sample(
    batches: list[Batch], arrays: bool = True
) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """Per-sample arrays (labels, images; concatenated) and strings of some batches."""
    strings: dict[str, list[str]] = {"sample_ids": [i for b in batches for i in b.ids]}
    if batches and batches[0].texts is not None:
        strings["texts"] = [t for b in batches for t in b.texts]
    out: dict[str, np.ndarray] = {}
    if arrays and batches and all(b.labels is not None for b in batches):
        out["labels"] = np.concatenate([b.labels for b in batches])
    if arrays and batches and all(b.images is not None for b in batches):
        out["images"] = np.concatenate([b.images for b in batches])
    return out, strings


# ---------------------------------------------------------------------------- the loop
@dataclass
class Plan:
    """What a front end hands the engine."""

    model: nn.Module
    layers: list[str]
    kind: str
    device: torch.device
    n_samples: int | None
    batches: Callable[[int], Iterator[Batch]]  # start sample -> batches from there
    to_rows: Callable[[str, torch.Tensor, Batch], Rows]
    layer_info: Callable[[str], dict]  # after the first batch: grid, n_features, meta extras
    expected_rows: Callable[[str], int | None]  # after the first batch, for preallocation
    meta: dict  # shared metadata (model, mode, transform, ...)
    fingerprint: dict  # everything that determines the rows, except the layer
    # Settings named when a resume is refused, if they differ too (see ShardStore's context)
    context: dict = field(default_factory=dict)
    label_names: list[str] | None = None
    progress: bool = True
    unit: str = "img"
    stop_early: bool = True
    # Called with every batch and the model's own output (the forward pass then runs to the
    # end): how the vision front end records a classifier's predictions.
    on_output: Callable[[Batch, Any], None] | None = None
    # Inputs per batch: a sharded extraction (torchrun) splits the inputs across ranks on
    # batch boundaries, so every rank runs exactly the batches a one-process run would.
    batch_size: int | None = None
    # The metadata the batches' ``stats`` give, from those of every batch of the extraction in
    # input order (across sessions of a resumed run and across ranks): one function of all of
    # them, so a stopped and resumed run records exactly what one uninterrupted run records.
    stats_meta: Callable[[list[dict]], dict] | None = None
    # The stats of a shard written before they were kept (an older version), from its strings
    # (the text front end counts the texts it holds); None: they cannot be had again.
    stats_of_shard: Callable[[dict], list[dict]] | None = None


def meta_from_stats(plan: Plan, meta: dict, stats: list[dict] | None) -> dict:
    """``meta`` with the fields the batches' ``stats`` give (all batches, in input order).

    ``stats`` is None when some shard on disk has none that can be had again (written before
    they were kept): ``meta`` is then returned as it is, without those fields (unknown).
    """
    if plan.stats_meta is None or stats is None:
        return meta
    return {**meta, **plan.stats_meta(stats)}


def shard_stats(plan: Plan, strings: dict) -> list[dict] | None:
    """One shard's batch stats from its strings file (None: it has none, none can be made)."""
    if "stats" in strings:
        return strings["stats"]
    if plan.stats_of_shard is not None:
        return plan.stats_of_shard(strings)
    return None


def join_stats(parts: list[list[dict] | None]) -> list[dict] | None:
    """The stats of consecutive shards as one list (None if one shard's are unknown)."""
    if any(p is None for p in parts):
        return None
    return [st for p in parts for st in p]


def layer_paths(out: str | Path | Mapping, layers: list[str], single: bool) -> dict[str, Path]:
    """Where each layer's folder goes.

    ``out`` itself (one layer), ``out/<layer>`` (several), or the folder a ``{layer: folder}``
    mapping names (how ``concept-probe run`` puts each layer's activations in its own run
    folder).
    """
    if isinstance(out, Mapping):
        missing = [n for n in layers if n not in out]
        if missing:
            raise ValueError(f"out= names no folder for layer(s) {', '.join(missing)}.")
        return {n: Path(out[n]) for n in layers}
    out = Path(out)
    return {n: out if single else out / safe_dirname(n) for n in layers}


def run(
    plan: Plan, out: str | Path | Mapping | None, single: bool
) -> Activations | dict[str, Activations]:
    """Run the extraction described by ``plan``; stream to ``out`` when it is given.

    ``out`` is a folder, or a mapping ``{layer: folder}`` (one process only).
    """
    if out is None:
        result = _run_memory(plan)
    elif (comm := _sharded.extraction_comm()) is not None:
        if isinstance(out, Mapping):
            raise ValueError("a sharded extraction takes one out= folder, not one per layer.")
        result = _sharded.run_disk(plan, Path(out), single, comm)
    else:
        result = _run_disk(plan, layer_paths(out, plan.layers, single))
    return result[plan.layers[0]] if single else result


def _progress(plan: Plan, initial: int):
    from tqdm import tqdm

    return tqdm(
        total=plan.n_samples,
        initial=initial,
        unit=plan.unit,
        desc=f"extract {', '.join(plan.layers)}"[:60],
        disable=not plan.progress,
        leave=False,
    )


def _forward_batches(plan: Plan, layers: list[str], start: int, end: int | None = None):
    """Yield ``(batch, {layer: Rows})`` for every batch from sample ``start`` (to ``end``)."""
    with _ModelOnDevice(plan.model, plan.device), capture_layers(plan.model, layers) as cap:
        first = True
        for batch in plan.batches(start):
            if end is not None and batch.start >= end:
                break
            if end is not None and batch.start + batch.size > end:  # pragma: no cover
                raise RuntimeError("a batch straddles the end of this rank's share of inputs")
            # The first batch runs the whole model to catch modules called more than once per
            # forward (ambiguous outputs); later batches stop after the last captured layer.
            stop = plan.stop_early and STOP_EARLY and not first and plan.on_output is None
            outs = _forward(plan, cap, batch, stop)
            if first:
                reused = {n: c for n, c in cap.calls.items() if c > 1}
                if reused:
                    name, count = next(iter(reused.items()))
                    raise ValueError(
                        f"layer {name!r} ran {count} times in one forward pass (the module is "
                        f"reused, e.g. one ReLU shared by several convolutions), so 'its output' "
                        f"is ambiguous. Choose a module that runs once, e.g. its parent block or "
                        f"the layer before it (see list_layers(model, sample_input), which shows "
                        f"the number of calls)."
                    )
                first = False
            if plan.on_output is not None:
                plan.on_output(batch, cap.output)
            yield batch, {name: plan.to_rows(name, outs[name], batch) for name in layers}


def _input_shape(inputs: Any) -> str:
    if isinstance(inputs, torch.Tensor):
        return str(tuple(inputs.shape))
    if isinstance(inputs, dict):
        return "{" + ", ".join(f"{k}: {tuple(v.shape)}" for k, v in inputs.items()) + "}"
    return type(inputs).__name__


def _forward(plan: Plan, cap, batch: Batch, stop_early: bool) -> dict[str, torch.Tensor]:
    """One forward pass; a failure inside the model becomes a one-line ForwardPassError."""
    try:
        return cap.run(batch.inputs, stop_early=stop_early)
    except ForwardPassError:
        raise
    except (RuntimeError, AssertionError) as exc:  # torch shape errors; timm asserts sizes
        text = " ".join(str(exc).split())[:240]
        raise ForwardPassError(
            f"the forward pass of {type(plan.model).__name__} failed on inputs "
            f"{_input_shape(batch.inputs)} ({type(exc).__name__}: {text}). Check that the "
            f"inputs fit the model: their size (input_size=, CLI --input-size) and channels, "
            f"and the model's arguments (CLI --model-kwargs)."
        ) from exc


def _meta(plan: Plan, layer: str) -> dict:
    info = plan.layer_info(layer)
    meta = dict(plan.meta, layer=layer)
    meta.update(info.get("meta", {}))
    return meta


def _run_memory(plan: Plan) -> dict[str, Activations]:
    sinks = {name: _MemorySink() for name in plan.layers}
    bar = _progress(plan, 0)
    first = True
    try:
        for batch, rows in _forward_batches(plan, plan.layers, 0):
            for name, r in rows.items():
                if first:
                    sinks[name].reserve(
                        plan.expected_rows(name), r.A.shape[1], plan.n_samples, batch
                    )
                sinks[name].add(batch, r)
            first = False
            bar.update(batch.size)
    finally:
        bar.close()
    if first:
        raise ValueError("the input yielded no samples; nothing to extract.")
    out = {}
    for name, sink in sinks.items():
        A, arrays, tokens = sink.parts()
        per_sample, strings = sink.per_sample()
        info = plan.layer_info(name)
        stats = [b.stats for b in sink.samples]
        out[name] = _build(
            plan, name, A, {**arrays, **per_sample}, {**strings, "tokens": tokens}, info, stats
        )
    return out


def _build(
    plan: Plan, layer: str, A, arrays: dict, strings: dict, info: dict, stats: list[dict]
) -> Activations:
    labels = arrays.get("labels")
    if labels is not None and plan.label_names is None and not (labels >= 0).any():
        labels = None
    return Activations(
        A,
        arrays["sample"],
        arrays.get("position"),
        kind=plan.kind,
        grid=info.get("grid"),
        sample_ids=strings["sample_ids"],
        labels=labels,
        label_names=plan.label_names,
        images=arrays.get("images"),
        tokens=strings.get("tokens"),
        char_spans=arrays.get("char_spans"),
        texts=strings.get("texts"),
        meta=meta_from_stats(plan, _meta(plan, layer), stats),
    )


def _run_disk(plan: Plan, paths: dict[str, Path]) -> dict[str, Activations]:
    stores = {
        name: _storage.ShardStore(
            paths[name], dict(plan.fingerprint, layer=name), plan.n_samples, context=plan.context
        )
        for name in plan.layers
    }
    status = {name: s.status() for name, s in stores.items()}
    todo = [n for n in plan.layers if status[n] != "complete"]
    if todo:
        stream(plan, stores, todo)
        for name in todo:
            store = stores[name]
            if not store.shards:
                raise ValueError("the input yielded no samples; nothing to extract.")
            if plan.n_samples is not None and store.n_samples_done != plan.n_samples:
                raise ValueError(
                    f"the input yielded {store.n_samples_done} samples but {plan.n_samples} were "
                    f"expected (it changed while extracting?); delete {store.path} and extract "
                    f"again."
                )
            _finalize(plan, name, store)
    return {name: Activations.load(paths[name], mmap=True) for name in plan.layers}


def stream(
    plan: Plan,
    stores: dict[str, _storage.ShardStore],
    todo: list[str],
    stop: int | None = None,
    show: bool = True,
) -> None:
    """Run the forward passes from where the stores stopped (to ``stop``), writing shards."""
    start = _align(stores, todo)
    for n in todo:
        stores[n].start()
    if stop is not None and start >= stop:
        return
    bar = _progress(plan, start) if show else None
    buffers: dict[str, list[tuple[Batch, Rows]]] = {n: [] for n in todo}
    buffered = 0
    try:
        for batch, rows in _forward_batches(plan, todo, start, stop):
            for name, r in rows.items():
                buffers[name].append((batch.per_sample(), r))
                buffered += r.nbytes + (batch.images.nbytes if batch.images is not None else 0)
            if bar is not None:
                bar.update(batch.size)
            if buffered >= SHARD_BYTES:
                _flush(plan, stores, buffers)
                buffered = 0
    except BaseException:
        # Interrupted (Ctrl-C, a bad input file, out of memory...): keep every batch that
        # was completed, so that a re-run resumes after it.
        try:
            _flush(plan, stores, buffers)
        except Exception:  # the original error matters more than a failed flush
            pass
        raise
    finally:
        if bar is not None:
            bar.close()
    _flush(plan, stores, buffers)


def _align(stores: dict[str, _storage.ShardStore], todo: list[str]) -> int:
    """Cut every partial store back to a common sample boundary; return it."""
    while True:
        start = min(stores[n].n_samples_done for n in todo)
        for n in todo:
            stores[n].shards = [s for s in stores[n].shards if s["samples"][1] <= start]
        if all(stores[n].n_samples_done == start for n in todo):
            return start


def _flush(plan: Plan, stores: dict, buffers: dict) -> None:
    for name, items in buffers.items():
        if not items:
            continue
        batches = [b for b, _ in items]
        rows = [r for _, r in items]
        # Lists of per-batch parts: written one after the other, never concatenated in memory.
        arrays: dict[str, list[np.ndarray]] = {
            "A": [r.A for r in rows],
            "sample": [r.sample for r in rows],
        }
        if rows[0].position is not None:
            arrays["position"] = [r.position for r in rows]
        if rows[0].char_spans is not None:
            arrays["char_spans"] = [r.char_spans for r in rows]
        if all(b.labels is not None for b in batches):
            arrays["labels"] = [b.labels for b in batches]
        if all(b.images is not None for b in batches):
            arrays["images"] = [b.images for b in batches]
        _, strings = _per_sample(batches, arrays=False)
        if rows[0].tokens is not None:
            strings["tokens"] = [t for r in rows for t in r.tokens]
        if plan.stats_meta is not None:
            strings["stats"] = [b.stats for b in batches]
        info = plan.layer_info(name)
        extra = {"grid": info.get("grid"), "meta": _meta(plan, name)}
        span = (batches[0].start, batches[-1].start + batches[-1].size)
        stores[name].write_shard(span, arrays, strings, extra)
        items.clear()


def _finalize(plan: Plan, name: str, store: _storage.ShardStore) -> None:
    strings: dict[str, list | None] = {"sample_ids": [], "texts": None, "tokens": None}
    has_labels = False
    stats = []
    for shard in store.shards:
        s = store.read_shard_strings(shard)
        stats.append(shard_stats(plan, s))
        strings["sample_ids"].extend(s["sample_ids"])
        for key in ("texts", "tokens"):
            if s.get(key) is not None:
                strings[key] = (strings[key] or []) + s[key]
        lab = store._shard_array(shard, "labels")
        has_labels |= lab is not None and bool((lab >= 0).any())
    extra = store.extra
    n_rows = sum(sh["files"]["A"]["shape"][0] for sh in store.shards)
    n_features = store.shards[0]["files"]["A"]["shape"][1]
    header = {
        "kind": plan.kind,
        "n_rows": n_rows,
        "n_features": n_features,
        "n_samples": len(strings["sample_ids"]),
        "grid": extra.get("grid"),
        "meta": meta_from_stats(plan, extra.get("meta", {}), join_stats(stats)),
    }
    drop = set() if (has_labels or plan.label_names is not None) else {"labels"}
    strings_out = {
        "sample_ids": strings["sample_ids"],
        "label_names": plan.label_names,
        "tokens": strings["tokens"],
        "texts": strings["texts"],
        "factor_values": None,
        "factor_names": None,
    }
    store.finalize(strings_out, header, skip=drop)


def json_safe(obj: Any) -> Any:
    """Round-trip through JSON (tuples become lists) so fingerprints compare equal on resume."""
    return json.loads(json.dumps(obj))
