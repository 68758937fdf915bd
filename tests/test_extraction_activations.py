"""Activations: validation, codes -> samples, subsets, and the atomic on-disk format."""

import json
import os

import numpy as np
import pytest
import torch

from concept_probe.errors import CorruptFileError
from concept_probe.extraction import Activations


def spatial(n_samples=3, h=2, w=3, d=4, seed=0, drop=()):
    """Rows in raster order for every sample; ``drop`` removes (sample, y, x) positions."""
    g = torch.Generator().manual_seed(seed)
    rows = [(i, y, x) for i in range(n_samples) for y in range(h) for x in range(w)]
    rows = [r for r in rows if r not in set(drop)]
    t = torch.tensor(rows)
    return Activations(
        torch.rand(len(rows), d, generator=g),
        t[:, 0],
        t[:, 1:],
        kind="spatial",
        grid=(h, w),
        sample_ids=[f"img{i}.png" for i in range(n_samples)],
        labels=torch.arange(n_samples) % 2,
        label_names=["cat", "dog"],
        images=torch.randint(0, 256, (n_samples, 8, 12, 3), generator=g, dtype=torch.uint8),
        meta={"model": "toy", "layer": "layer3"},
    )


def text_acts():
    texts = ["ab cd", "efg"]
    return Activations(
        torch.randn(3, 5, generator=torch.Generator().manual_seed(1)),
        torch.tensor([0, 0, 1]),
        torch.tensor([1, 2, 1]),
        kind="text",
        tokens=["ab", "cd", "efg"],
        char_spans=torch.tensor([[0, 2], [3, 5], [0, 3]]),
        texts=texts,
        sample_ids=["text[0]", "text[1]"],
    )


def test_sizes_dtypes_and_repr():
    acts = spatial()
    assert (acts.n_rows, acts.n_samples, acts.n_features) == (18, 3, 4)
    assert acts.A.dtype == torch.float32 and acts.sample.dtype == torch.int64
    assert acts.position.shape == (18, 2) and acts.images.dtype == torch.uint8
    assert repr(acts).startswith("Activations(kind='spatial', n_rows=18")
    assert "layer='layer3'" in repr(acts)
    # numpy and float64 inputs are converted; default sample ids are filled in
    a = Activations(np.ones((2, 3)), np.array([0, 1]), kind="pooled")
    assert a.A.dtype == torch.float32 and a.sample_ids == ["sample[0]", "sample[1]"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"kind": "grid"}, ValueError, "kind must be one of"),
        ({"sample": torch.zeros(5, dtype=torch.long)}, ValueError, "one sample index per row"),
        ({"grid": None}, ValueError, "needs grid"),
        ({"position": torch.zeros(18, dtype=torch.long)}, ValueError, "2 dimension"),
        ({"position": torch.zeros(18, 3, dtype=torch.long)}, ValueError, r"\(n_rows, 2\)"),
        ({"position": torch.full((18, 2), 5)}, ValueError, "outside the grid"),
        ({"sample_ids": ["a"]}, ValueError, "disagree on the number of samples"),
        ({"labels": torch.tensor([0, 1, 7])}, ValueError, "labels must lie in"),
        ({"images": torch.zeros(3, 8, 8, 3)}, TypeError, "uint8"),
        ({"images": torch.zeros(3, 3, 8, 8, dtype=torch.uint8)}, ValueError, "channels last"),
        ({"meta": {"f": object()}}, TypeError, "JSON"),
        ({"factors": {"shape": torch.zeros(4, dtype=torch.long)}}, ValueError, "with_factors"),
        ({"sample": torch.full((18,), 9)}, ValueError, "below n_samples"),
        ({"A": torch.zeros(18)}, ValueError, "2 dimension"),
    ],
)
def test_constructor_rejects_inconsistent_inputs(kwargs, error, match):
    base = spatial()
    args = {
        "A": base.A,
        "sample": base.sample,
        "position": base.position,
        "kind": "spatial",
        "grid": base.grid,
        "sample_ids": base.sample_ids,
        "labels": base.labels,
        "label_names": base.label_names,
        "images": base.images,
        "meta": base.meta,
    }
    args.update(kwargs)
    with pytest.raises(error, match=match):
        Activations(args.pop("A"), args.pop("sample"), args.pop("position"), **args)
    with pytest.raises(ValueError, match="no position"):
        Activations(torch.zeros(2, 2), torch.arange(2), torch.zeros(2, 2), kind="pooled")


def test_sample_scores_match_a_plain_loop():
    acts = spatial(drop=[(1, 0, 0), (1, 1, 2)])
    Z = torch.rand(acts.n_rows, 3, generator=torch.Generator().manual_seed(3))
    for reduce, fn in (("max", lambda z: z.max(0).values), ("mean", lambda z: z.mean(0))):
        got = acts.sample_scores(Z, reduce=reduce)
        want = torch.stack([fn(Z[acts.sample == i]) for i in range(acts.n_samples)])
        assert got.shape == (3, 3)
        assert torch.allclose(got, want)
    with pytest.raises(ValueError, match="reduce"):
        acts.sample_scores(Z, reduce="sum")
    with pytest.raises(ValueError, match=r"\(n_rows, k\)"):
        acts.sample_scores(Z[:-1])
    # numpy codes work too
    assert torch.allclose(acts.sample_scores(Z.numpy()), acts.sample_scores(Z))


def test_heatmaps_put_every_code_at_its_position():
    acts = spatial(drop=[(2, 1, 1)])
    Z = torch.rand(acts.n_rows, 2, generator=torch.Generator().manual_seed(4))
    heat = acts.heatmaps(Z)
    assert heat.shape == (3, 2, 3, 2)
    for r in range(acts.n_rows):
        i, (y, x) = int(acts.sample[r]), acts.position[r].tolist()
        assert torch.equal(heat[i, y, x], Z[r])
    assert torch.equal(heat[2, 1, 1], torch.zeros(2))  # dropped position
    with pytest.raises(ValueError, match="kind='spatial'"):
        text_acts().heatmaps(torch.zeros(3, 1))


def test_heatmaps_skip_prefix_token_rows():
    acts = Activations(
        torch.ones(3, 2),
        torch.tensor([0, 0, 0]),
        torch.tensor([[-1, 0], [0, 0], [0, 1]]),
        kind="spatial",
        grid=(1, 2),
    )
    heat = acts.heatmaps(torch.tensor([[9.0], [1.0], [2.0]]))
    assert heat[0, :, :, 0].tolist() == [[1.0, 2.0]]


def test_rows_of_sorted_and_unsorted():
    acts = spatial()
    assert acts.rows_of(1).tolist() == list(range(6, 12))
    assert acts.rows_of(-1).tolist() == list(range(12, 18))
    shuffled = acts.subset(torch.tensor([7, 0, 6, 1]))
    assert shuffled.rows_of(1).tolist() == [0, 2]
    assert shuffled.rows_of(2).tolist() == []
    with pytest.raises(IndexError):
        acts.rows_of(3)


def test_subset_keeps_sample_indices_and_per_sample_data():
    acts = text_acts()
    sub = acts.subset(torch.tensor([False, True, True]))
    assert sub.sample.tolist() == [0, 1] and sub.n_samples == 2
    assert sub.tokens == ["cd", "efg"] and sub.char_spans.tolist() == [[3, 5], [0, 3]]
    assert sub.texts == acts.texts and sub.position.tolist() == [2, 1]
    assert torch.equal(sub.A, acts.A[1:])
    sp = spatial().subset([17, 0])
    assert (
        sp.sample.tolist() == [2, 0] and sp.images.shape[0] == 3 and sp.labels.tolist() == [0, 1, 0]
    )
    with pytest.raises(IndexError):
        acts.subset(torch.tensor([3]))
    # A plain list of bools is a mask too, as is a numpy one.
    assert acts.subset([False, True, True]).tokens == ["cd", "efg"]
    assert acts.subset(np.array([True, False, True])).tokens == acts.subset([0, 2]).tokens


def test_with_factors_from_grid_cells_and_rows():
    acts = spatial(drop=[(0, 0, 1)])
    cells = torch.arange(3 * 2 * 3).reshape(3, 2, 3)
    f = acts.with_factors({"colour": cells}, {"colour": [str(i) for i in range(18)]})
    want = cells[acts.sample, acts.position[:, 0], acts.position[:, 1]]
    assert torch.equal(f.factors["colour"], want)
    assert f.factor_values["colour"][5] == "5"
    f2 = f.with_factors({"shape": torch.zeros(acts.n_rows, dtype=torch.long)})
    assert set(f2.factors) == {"colour", "shape"}
    with pytest.raises(ValueError, match=r"\(n_samples, h, w\)"):
        acts.with_factors({"colour": torch.zeros(3, 4, 4, dtype=torch.long)})


@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_roundtrip_every_field(tmp_path, mmap):
    acts = spatial().with_factors(
        {"shape": torch.arange(3 * 6).reshape(3, 2, 3) % 4}, {"shape": ["a", "b", "c", "d"]}
    )
    path = acts.save(tmp_path / "acts.cp")
    back = Activations.load(path, mmap=mmap)
    for name in ("A", "sample", "position", "labels", "images"):
        assert torch.equal(getattr(back, name), getattr(acts, name)), name
    assert back.A.dtype == torch.float32
    assert back.sample_ids == acts.sample_ids and back.label_names == acts.label_names
    assert back.grid == acts.grid and back.kind == "spatial" and back.meta == acts.meta
    assert torch.equal(back.factors["shape"], acts.factors["shape"])
    assert back.factor_values == acts.factor_values
    t = text_acts()
    tb = Activations.load(t.save(tmp_path / "text"), mmap=mmap)
    assert tb.tokens == t.tokens and tb.texts == t.texts
    assert torch.equal(tb.char_spans, t.char_spans) and torch.equal(tb.position, t.position)
    # nothing was pickled: every array loads with allow_pickle=False
    for f in (tmp_path / "acts.cp").glob("*.npy"):
        np.load(f, allow_pickle=False)


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux /proc")
def test_mmap_load_is_backed_by_the_file(tmp_path):
    acts = spatial(n_samples=4)
    acts.save(tmp_path / "a")
    back = Activations.load(tmp_path / "a", mmap=True)
    with open("/proc/self/maps") as f:
        assert str(tmp_path / "a" / "A.npy") in f.read()
    back.A[0, 0] = 123.0  # copy-on-write: the file is untouched
    assert torch.equal(Activations.load(tmp_path / "a").A, acts.A)


def test_save_replaces_an_activations_folder_but_never_other_files(tmp_path):
    a, b = spatial(seed=0), spatial(seed=1)
    a.save(tmp_path / "x")
    b.save(tmp_path / "x")
    assert torch.equal(Activations.load(tmp_path / "x").A, b.A)
    assert [p.name for p in tmp_path.iterdir()] == ["x"]  # no temporary leftovers
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        a.save(other)
    assert (other / "notes.txt").read_text() == "keep me"


def test_truncated_array_gives_a_clear_error(tmp_path):
    path = spatial().save(tmp_path / "a")
    data = (path / "A.npy").read_bytes()
    (path / "A.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match=r"A\.npy.*bytes but the manifest"):
        Activations.load(path)


def test_flipped_bytes_in_a_small_file_are_caught_by_the_checksum(tmp_path):
    path = spatial().save(tmp_path / "a")
    raw = bytearray((path / "sample.npy").read_bytes())
    raw[-1] ^= 0xFF
    (path / "sample.npy").write_bytes(bytes(raw))
    with pytest.raises(CorruptFileError, match="checksum"):
        Activations.load(path)


def test_missing_or_broken_manifest(tmp_path):
    path = spatial().save(tmp_path / "a")
    (path / "manifest.json").write_text('{"format": "concept_probe.activ')
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        Activations.load(path)
    os.remove(path / "manifest.json")
    with pytest.raises(CorruptFileError, match=r"no manifest\.json"):
        Activations.load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Activations.load(tmp_path / "nothing")
    (tmp_path / "file.npz").write_bytes(b"PK")
    with pytest.raises(CorruptFileError, match="is a file"):
        Activations.load(tmp_path / "file.npz")
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CorruptFileError, match="not a concept_probe Activations folder"):
        Activations.load(other)


def test_missing_array_file(tmp_path):
    path = spatial().save(tmp_path / "a")
    os.remove(path / "position.npy")
    with pytest.raises(CorruptFileError, match="missing"):
        Activations.load(path)


def test_replace_validates_and_rejects_unknown_fields():
    acts = spatial()
    new = acts.replace(sample_ids=["x", "y", "z"], meta={"dataset": "d"})
    assert new.sample_ids == ["x", "y", "z"] and new.meta == {"dataset": "d"}
    assert new.A.data_ptr() == acts.A.data_ptr()  # no copy of A
    assert acts.sample_ids[0] == "img0.png"
    with pytest.raises(ValueError, match="disagree"):
        acts.replace(sample_ids=["x"])
    with pytest.raises(TypeError, match="unknown field"):
        acts.replace(colour="red")


def test_save_at_a_broken_link_is_refused_before_writing(tmp_path):
    """A dangling link is no free name: the swap failed at the end with 'Not a directory'
    (after every file was written); it is refused up front, naming the link and the fix."""
    link = tmp_path / "acts"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(NotADirectoryError, match=r"acts is a broken symbolic link \(to .*gone\)"):
        spatial().save(link)
    assert [p.name for p in tmp_path.iterdir()] == ["acts"] and link.is_symlink()
