"""Image files in: every PIL pixel mode read right, unreadable files skipped or all listed,
and ``images`` given as one file or a list file (issue 14)."""

import io
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from _cli_helpers import run_cli as _cli
from PIL import Image
from torch import nn

from concept_probe.errors import SkippedInputsWarning, UnreadableImageError
from concept_probe.extraction import Activations, extract_image_activations
from concept_probe.extraction._vision_inputs import to_rgb

TESTS = Path(__file__).resolve().parent


def to_tensor(im):
    """The transform under test: the exact 8-bit RGB values, as floats in [0, 1]."""
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


def identity_rows(images, **kw):
    net = nn.Sequential(nn.Identity())
    return extract_image_activations(
        net, "0", images, transform=to_tensor, progress=False, keep_images=False, **kw
    )


def seen(images, **kw):
    """What the model was given: (n_images, H, W, 3) in [0, 1], through an identity layer."""
    acts = identity_rows(images, **kw)
    h, w = acts.grid
    return acts, acts.A.reshape(acts.n_samples, h, w, 3).numpy()


def picture(h=12, w=10, seed=0):
    """A seeded 8-bit grey picture with the whole 0..255 range."""
    a = np.random.default_rng(seed).integers(0, 256, (h, w)).astype(np.uint8)
    a[0, 0], a[0, 1] = 0, 255
    return a


def png_bytes(arr, bit_depth, colour_type):
    """A PNG written by hand (Pillow cannot write 16-bit RGB): colour type 0 grey, 2 RGB."""
    h, w = arr.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"
    raw = b"".join(b"\x00" + arr[y].astype(dtype).tobytes() for y in range(h))

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", w, h, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


# ------------------------------------------------------------------------ pixel modes
def test_16_bit_png_matches_its_8_bit_version_within_one_level(tmp_path):
    a8 = picture()
    Image.fromarray(a8).save(tmp_path / "a8.png")
    im16 = Image.fromarray(a8.astype(np.uint16) * 257)
    assert im16.mode == "I;16"
    im16.save(tmp_path / "b16.png")
    with Image.open(tmp_path / "b16.png") as im:
        assert im.mode == "I;16"
        # the failure this fixes: Pillow's own convert clips 16-bit values to 255 (white)
        assert (np.asarray(im.convert("RGB")) == 255).mean() > 0.9
    _, x = seen(tmp_path)
    want = a8[..., None].repeat(3, axis=-1) / 255
    assert np.abs(x[0] - want).max() < 1e-6  # the 8-bit file
    assert np.abs(x[1] - want).max() <= 1 / 255 + 1e-6  # the 16-bit one: the same picture
    assert x[1].mean() < 0.6  # not white


def test_16_bit_rgb_and_grey_pngs_written_by_hand(tmp_path):
    rgb8 = np.stack([picture(seed=s) for s in (1, 2, 3)], axis=-1)
    (tmp_path / "rgb16.png").write_bytes(png_bytes(rgb8.astype(np.uint16) * 257, 16, 2))
    (tmp_path / "grey16.png").write_bytes(png_bytes(picture().astype(np.uint16) * 257, 16, 0))
    _, x = seen(tmp_path)
    assert np.abs(x[1] - rgb8 / 255).max() <= 1 / 255 + 1e-6
    assert np.abs(x[0] - picture()[..., None] / 255).max() <= 1 / 255 + 1e-6


def grey(a):
    return np.repeat(np.asarray(a, dtype=np.float64)[..., None], 3, axis=-1)


def test_every_mode_to_rgb_by_its_rule():
    a8 = picture()
    rgb = np.stack([a8, 255 - a8, a8 // 2], axis=-1)
    alpha = picture(seed=5)
    on_white = (rgb * (alpha[..., None] / 255) + 255 * (1 - alpha[..., None] / 255)).round()
    big_endian = Image.fromarray((a8.astype(np.uint16) * 257).astype(">u2"))
    assert big_endian.mode == "I;16B"
    palette = Image.fromarray(rgb).quantize(16)
    palette.info["transparency"] = 3
    pal_rgb = np.asarray(palette.convert("RGB")).astype(float)
    pal_rgb[np.asarray(palette) == 3] = 255
    cases = {
        "L": (Image.fromarray(a8), grey(a8)),
        "1": (Image.fromarray(a8 > 127), grey((a8 > 127) * 255)),
        "I;16B": (big_endian, grey(a8)),
        "I": (Image.fromarray(a8.astype(np.int32) * 257), grey(a8)),
        "F": (Image.fromarray(a8.astype(np.float32) / 255), grey(a8)),
        "RGBA": (Image.fromarray(np.dstack([rgb, alpha])), on_white),
        "LA": (Image.fromarray(np.dstack([a8, alpha])), on_white[..., :1].repeat(3, -1)),
        "P": (palette, pal_rgb),
        "CMYK": (Image.fromarray(rgb).convert("CMYK"), rgb),
    }
    cases["LA"] = (
        Image.fromarray(np.dstack([a8, alpha])),
        grey(a8 * (alpha / 255) + 255 * (1 - alpha / 255)).round(),
    )
    for mode, (im, want) in cases.items():
        assert im.mode == mode
        out = to_rgb(im)
        assert out.mode == "RGB"
        err = np.abs(np.asarray(out).astype(float) - want).max()
        assert err <= 1, (mode, err)
    premult = Image.fromarray(np.dstack([rgb, alpha])).convert("RGBa")
    assert np.abs(np.asarray(to_rgb(premult)).astype(float) - on_white).max() <= 2


def test_modes_without_a_sane_rule_are_refused_naming_mode_and_fix(tmp_path):
    hot = Image.fromarray(np.full((4, 4), 300.0, np.float32))
    with pytest.raises(ValueError, match=r"mode 'F'.*\[0, 1\].*\[300, 300\].*Rescale"):
        to_rgb(hot)
    neg = Image.fromarray(np.full((4, 4), -5, np.int32))
    with pytest.raises(ValueError, match=r"mode 'I'.*0\.\.65535.*\[-5, -5\]"):
        to_rgb(neg)
    hot.save(tmp_path / "hot.tif")
    with pytest.raises(UnreadableImageError, match=r"hot\.tif.*mode 'F'.*on_error='skip'"):
        seen(tmp_path)


def test_pil_images_in_memory_go_through_the_same_rules():
    a8 = picture()
    _, x = seen([Image.fromarray(a8.astype(np.uint16) * 257), Image.fromarray(a8)])
    assert np.abs(x[0] - x[1]).max() <= 1 / 255 + 1e-6


def _every_mode():
    """One seeded 12 x 10 picture in each mode a rule converts (TIFF keeps each as it is)."""
    a8 = picture()
    rgb = np.stack([a8, 255 - a8, a8 // 2], axis=-1)
    return {
        "I;16": Image.fromarray(a8.astype(np.uint16) * 257),
        "I;16B": Image.fromarray((a8.astype(np.uint16) * 257).astype(">u2")),
        "I": Image.fromarray(a8.astype(np.int32) * 200),
        "F": Image.fromarray(a8.astype(np.float32) / 300),
        "LA": Image.fromarray(np.dstack([a8, picture(seed=5)])),
        "P": Image.fromarray(rgb).quantize(16),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "1": Image.fromarray(a8 > 127),
        "RGBA": Image.fromarray(np.dstack([rgb, picture(seed=6)])),
    }


class _Items(torch.utils.data.Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i], 0


def test_in_memory_images_of_every_mode_are_read_like_files(tmp_path):
    """A list of PIL images, a dataset of them and their files give the model the same pixels
    (16-bit scaled by 65535, F as [0, 1], alpha on white), also when streamed to disk."""
    images = _every_mode()
    assert [im.mode for im in images.values()] == list(images)
    for k, im in enumerate(images.values()):
        im.save(tmp_path / f"{k:02d}.tif")
    _, from_files = seen(tmp_path)
    want = np.stack([np.asarray(to_rgb(im)) for im in images.values()]) / 255
    np.testing.assert_allclose(from_files, want, atol=1e-6)
    for given in (list(images.values()), _Items(list(images.values()))):
        _, x = seen(given)
        np.testing.assert_array_equal(x, from_files)
    # streamed (out=): the resume fingerprint reads every mode's pixels, big-endian ones too
    _, x = seen(list(images.values()), out=tmp_path / "acts.cp")
    np.testing.assert_array_equal(x, from_files)


def test_in_memory_images_no_rule_converts_are_refused_naming_each(tmp_path):
    hot = Image.fromarray(np.full((4, 3), 300.0, np.float32))
    neg = Image.fromarray(np.full((4, 3), -5, np.int32))
    fine = Image.fromarray(picture(4, 3))
    calls = []
    net = nn.Sequential(nn.Identity())
    net.register_forward_pre_hook(lambda m, a: calls.append(1))
    kw = {"transform": to_tensor, "progress": False}
    # a list: every refused image listed up front, before any forward pass
    with pytest.raises(ValueError) as info:
        extract_image_activations(net, "0", [fine, hot, fine, neg], **kw)
    message = str(info.value)
    assert message.startswith("2 of the 4 images cannot be read into 8-bit RGB: images[1] (a PIL")
    assert "images[1] (a PIL image of 3 x 4 px): a mode 'F' (32-bit float) image" in message
    assert "[300, 300]. Rescale it to [0, 1] first" in message
    assert "images[3] (a PIL image of 3 x 4 px): a mode 'I' (integer) image" in message
    assert "[-5, -5]. Rescale it to 0..65535" in message
    assert calls == []
    with pytest.raises(ValueError, match=r"^images\[0\] \(a PIL .*mode 'F'.*16-bit image\.$"):
        extract_image_activations(net, "0", [hot], **kw)
    # a dataset: read one item at a time, so the item is named when it is read
    with pytest.raises(ValueError, match=r"^dataset\[2\] \(a PIL .*mode 'I'.*\[-5, -5\]"):
        extract_image_activations(net, "0", _Items([fine, fine, neg]), batch_size=1, **kw)


# ------------------------------------------------------------------------ unreadable files
def solid(colour, size=8):
    return Image.new("RGB", (size, size), colour)


def truncated_png():
    b = io.BytesIO()
    Image.fromarray(picture(64, 64)).save(b, "PNG")
    return b.getvalue()[:300]


@pytest.fixture
def mixed(tmp_path):
    """Two classes, four good images and two corrupt files (one only fails when decoded)."""
    good = {"cat/a.png": (250, 0, 0), "cat/c.png": (0, 250, 0), "dog/e.png": (0, 0, 250)}
    good["dog/f.png"] = (250, 250, 0)
    for rel, colour in good.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        solid(colour).save(tmp_path / rel)
    (tmp_path / "cat" / "b.jpg").write_bytes(b"<html>not a jpeg</html>")
    (tmp_path / "dog" / "d.png").write_bytes(truncated_png())
    return tmp_path, good


def test_default_lists_every_unreadable_file_found_up_front(mixed):
    folder, _ = mixed
    (folder / "dog" / "z.png").write_bytes(b"")
    with pytest.raises(UnreadableImageError) as info:
        seen(folder)
    msg = str(info.value)
    assert "could not read 2 of 7 image files" in msg
    assert "b.jpg" in msg and "z.png" in msg and "--skip-unreadable" in msg
    (folder / "dog" / "z.png").unlink()
    # a file whose header is fine but whose data is cut fails when read, named, with the fix
    with pytest.raises(UnreadableImageError, match=r"b\.jpg"):
        seen(folder)
    (folder / "cat" / "b.jpg").unlink()
    with pytest.raises(UnreadableImageError, match=r"d\.png.*truncated.*on_error='skip'"):
        seen(folder)


def test_skip_keeps_provenance_of_the_files_kept(mixed, tmp_path_factory):
    folder, good = mixed
    with pytest.warns(SkippedInputsWarning) as record:
        acts, x = seen(folder, on_error="skip")
    assert len(record) == 1
    msg = str(record[0].message)
    assert "skipped 2 unreadable image file(s) of the 6" in msg
    assert "b.jpg" in msg and "d.png" in msg and "truncated" in msg
    kept = sorted(good)
    assert acts.n_samples == 4
    assert acts.sample_ids == [str(folder / r) for r in kept]
    assert acts.label_names == ["cat", "dog"] and acts.labels.tolist() == [0, 0, 1, 1]
    for i, rel in enumerate(kept):  # each sample's rows are its own file's pixels
        assert np.abs(x[i] - np.array(good[rel]) / 255).max() < 1e-6
        assert (acts.sample[acts.rows_of(i)] == i).all()
    skipped = acts.meta["skipped"]
    assert [s["path"] for s in skipped] == [str(folder / "cat/b.jpg"), str(folder / "dog/d.png")]
    assert "cannot identify" in skipped[0]["reason"] and "truncated" in skipped[1]["reason"]
    assert str(folder) not in skipped[0]["reason"]
    # saved and loaded, in memory and streamed to a folder
    out = tmp_path_factory.mktemp("saved")
    acts.save(out / "acts.cp")
    assert Activations.load(out / "acts.cp").meta["skipped"] == skipped
    with pytest.warns(SkippedInputsWarning):
        streamed, _ = seen(folder, on_error="skip", out=out / "stream")
    assert streamed.meta["skipped"] == skipped and streamed.sample_ids == acts.sample_ids
    assert Activations.load(out / "stream").meta["skipped"] == skipped
    with pytest.warns(SkippedInputsWarning):  # the same call again: the finished folder is reused
        again, _ = seen(folder, on_error="skip", out=out / "stream")
    assert torch.equal(again.A, streamed.A) and again.meta["skipped"] == skipped


def test_skip_with_max_rows_draws_from_the_kept_images_only(mixed):
    folder, _ = mixed
    with pytest.warns(SkippedInputsWarning):
        acts = identity_rows(folder, on_error="skip", max_rows=40, seed=1)
    assert acts.n_rows == 40 and set(acts.sample.tolist()) == {0, 1, 2, 3}


def test_skip_refuses_when_nothing_is_readable_and_for_non_file_inputs(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(UnreadableImageError, match="none of the 1 image files"):
        seen(tmp_path, on_error="skip")
    with pytest.raises(ValueError, match="not files"):
        seen([solid((1, 2, 3))], on_error="skip")
    with pytest.raises(ValueError, match="on_error must be one of 'raise', 'skip'"):
        seen(tmp_path, on_error="ignore")


def test_resuming_with_another_on_error_keeps_rows_or_is_refused_naming_it(tmp_path, monkeypatch):
    """on_error is no part of the fingerprint: with the same files kept it gives the same rows,
    so a resume with the other value goes on; when it keeps other files, the refusal names it."""
    from concept_probe.errors import ExtractionMismatchError

    monkeypatch.setattr("concept_probe.extraction._engine.SHARD_BYTES", 1)  # a shard a batch
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(5):
        solid((40 * i, 255 - 40 * i, 7 * i)).save(folder / f"{i}.png")
    calls = []
    net = nn.Sequential(nn.Identity())

    def interrupt_third(module, args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt

    def extract(on_error, out):
        return extract_image_activations(
            net, "0", folder, transform=to_tensor, batch_size=1, progress=False,
            on_error=on_error, out=out,
        )  # fmt: skip

    whole = extract("raise", tmp_path / "whole.cp")
    handle = net.register_forward_pre_hook(interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        extract("raise", tmp_path / "acts.cp")
    handle.remove()
    calls.clear()
    counter = net.register_forward_pre_hook(lambda m, a: calls.append(1))
    resumed = extract("skip", tmp_path / "acts.cp")  # no file unreadable: the same 5 kept
    counter.remove()
    assert len(calls) == 3  # images 2, 3 and 4 only
    assert torch.equal(resumed.A, whole.A) and resumed.sample_ids == whole.sample_ids
    assert resumed.meta == whole.meta and "skipped" not in resumed.meta

    # a file that fails only when decoded: kept by 'raise' (which stops there), left out by
    # 'skip', so the inputs differ; the refusal says on_error changed them
    (folder / "2b.png").write_bytes(truncated_png())
    with pytest.raises(UnreadableImageError, match=r"2b\.png"):
        extract("raise", tmp_path / "stopped.cp")
    before = sorted(p.name for p in (tmp_path / "stopped.cp").iterdir())
    assert "progress.json" in before  # images 0, 1 and 2 were kept
    with pytest.warns(SkippedInputsWarning), pytest.raises(ExtractionMismatchError) as info:
        extract("skip", tmp_path / "stopped.cp")
    assert info.value.differs == ["data", "n_samples", "on_error"] and not info.value.complete
    assert "(differs in: data, n_samples, on_error), so it cannot be resumed" in str(info.value)
    assert sorted(p.name for p in (tmp_path / "stopped.cp").iterdir()) == before
    # and the other way: a finished 'skip' run is not reused by 'raise', which keeps the file
    with pytest.warns(SkippedInputsWarning):
        extract("skip", tmp_path / "skipped.cp")
    with pytest.raises(ExtractionMismatchError) as info:
        extract("raise", tmp_path / "skipped.cp")
    assert info.value.differs == ["data", "n_samples", "on_error"] and info.value.complete


def test_report_line_lists_the_skipped_inputs():
    from concept_probe.visualization.report import _input_lines

    skipped = [{"path": f"cat/{i}.jpg", "reason": "cannot identify image file"} for i in range(23)]
    line = [x for x in _input_lines({"skipped": skipped}) if x]
    assert len(line) == 1 and line[0].startswith("Skipped inputs: 23 unreadable file(s)")
    assert "cat/19.jpg (cannot identify image file); and 3 more" in line[0]
    assert "cat/20.jpg" not in line[0]
    assert not [x for x in _input_lines({}) if x]  # nothing skipped: no line
    # the full HTML report shows it: test_cli_skip_unreadable_list_file_and_one_file


# ------------------------------------------------------------------------ one file, a list
def test_one_image_file_and_a_list_file(tmp_path):
    for rel, colour in {
        "cat/a.png": (200, 0, 0),
        "dog/b.png": (0, 200, 0),
        "c.png": (9, 9, 9),
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        solid(colour).save(tmp_path / rel)
    one, x = seen(tmp_path / "dog" / "b.png")
    assert one.n_samples == 1 and one.sample_ids == [str(tmp_path / "dog/b.png")]
    assert np.abs(x[0] - np.array([0, 200, 0]) / 255).max() < 1e-6
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "all.txt").write_text(
        f"# a comment\n\n../dog/b.png\n  ../cat/a.png  \n{tmp_path / 'c.png'}\n"
    )
    acts, x = seen(lists / "all.txt")
    want = [str(lists / "../dog/b.png"), str(lists / "../cat/a.png"), str(tmp_path / "c.png")]
    assert acts.sample_ids == want
    assert acts.labels is None  # paths outside the list's folder have no class
    assert np.abs(x[1] - np.array([200, 0, 0]) / 255).max() < 1e-6
    (tmp_path / "split.txt").write_text("dog/b.png\ncat/a.png\nc.png\n")
    split, _ = seen(tmp_path / "split.txt")
    assert split.label_names == ["cat", "dog"] and split.labels.tolist() == [1, 0, -1]
    assert "list file" in split.meta["input"]


def test_bad_paths_and_lists_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*list file \(\.txt"):
        seen(tmp_path / "missing")
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    with pytest.raises(ValueError, match=r"names no images: write one image path per line"):
        seen(tmp_path / "empty.txt")
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")
    with pytest.raises(ValueError, match=r"notes\.pdf' is not an image file .* nor a list file"):
        seen(tmp_path / "notes.pdf")
    solid((1, 2, 3)).save(tmp_path / "ok.png")
    (tmp_path / "gone.txt").write_text("ok.png\nno1.png\nno2.png\n")
    with pytest.raises(UnreadableImageError, match=r"2 of 3.*no1\.png' \(file not found\).*no2"):
        seen(tmp_path / "gone.txt")
    with pytest.warns(SkippedInputsWarning, match="no1.png"):
        acts, _ = seen(tmp_path / "gone.txt", on_error="skip")
    assert (
        acts.n_samples == 1
        and [s["reason"] for s in acts.meta["skipped"]] == ["file not found"] * 2
    )


# ------------------------------------------------------------------------ the command line
@pytest.fixture
def byo(monkeypatch):
    monkeypatch.chdir(TESTS)  # the user's model file lies in the current directory
    monkeypatch.delitem(sys.modules, "_byo_model", raising=False)


TINY = ["--model", "_byo_model:TinyNet", "--input-size", "8", "--layer", "layer1", "--quiet"]


def test_cli_skip_unreadable_list_file_and_one_file(mixed, byo, capsys, tmp_path_factory):
    folder, _ = mixed
    out = tmp_path_factory.mktemp("cli")
    code, _, err = _cli(capsys, "extract", "--images", folder, *TINY, "--out", out / "a.cp")
    assert code == 2 and "b.jpg" in err and "or pass --skip-unreadable to leave" in err
    assert "on_error" not in err  # the flag, not the library's keyword
    assert len([line for line in err.splitlines() if line.startswith("concept-probe:")]) == 1
    code, _, err = _cli(
        capsys,
        "run",
        "--images",
        folder,
        *TINY,
        "--skip-unreadable",
        "--concepts",
        "2",
        "--max-iter",
        "5",
        "--out",
        out / "run",
    )
    assert code == 0, err
    lines = [line for line in err.splitlines() if "skipped 2 unreadable" in line]
    assert len(lines) == 1 and "b.jpg" in lines[0] and "d.png" in lines[0]
    acts = Activations.load(out / "run" / "activations.cp")
    assert acts.n_samples == 4 and len(acts.meta["skipped"]) == 2
    assert "Skipped inputs: 2" in (out / "run" / "report" / "index.html").read_text()
    (folder / "gone.txt").write_text("cat/a.png\nmissing.png\n")
    argv = ["extract", "--images", folder / "gone.txt", *TINY, "--skip-unreadable"]
    code, _, err = _cli(capsys, *argv, "--out", out / "g.cp")
    assert code == 0, err
    assert [s["reason"] for s in Activations.load(out / "g.cp").meta["skipped"]] == [
        "file not found"
    ]
    (folder / "list.txt").write_text("cat/a.png\ndog/e.png\n")
    code, _, err = _cli(
        capsys, "extract", "--images", folder / "list.txt", *TINY, "--out", out / "l.cp"
    )
    assert code == 0, err
    assert Activations.load(out / "l.cp").labels.tolist() == [0, 1]
    code, _, err = _cli(
        capsys, "extract", "--images", folder / "cat/a.png", *TINY, "--out", out / "o.cp"
    )
    assert code == 0, err and Activations.load(out / "o.cp").n_samples == 1
    code, _, err = _cli(capsys, "extract", "--images", folder / "nope", *TINY)
    assert code == 2 and "no such folder or file" in err


def test_cli_explain_skips_the_files_the_extraction_skipped(mixed):
    """The explain stage reads the folder again: it must leave out the same files, quietly."""
    import argparse

    from concept_probe.cli import _explain_inputs
    from concept_probe.explain import image_inputs

    pytest.importorskip("timm")
    folder, _ = mixed
    with pytest.warns(SkippedInputsWarning):
        acts = identity_rows(folder, on_error="skip")
    args = argparse.Namespace(texts=None, images=folder, model="resnet10t", checkpoint=None)
    model, inputs, *_ = _explain_inputs(args, acts)  # a leaked warning would fail here
    assert inputs.shape[0] == acts.n_samples == 4
    with pytest.warns(SkippedInputsWarning):
        again = image_inputs(model, folder, on_error="skip")
    assert torch.equal(inputs, again)
    with pytest.raises(UnreadableImageError, match=r"b\.jpg"):  # nothing skipped at extraction
        _explain_inputs(args, acts.replace(meta={}))
