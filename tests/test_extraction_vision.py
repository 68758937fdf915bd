"""Vision front end: exact provenance, ViT token grids, inputs, subsampling, streaming."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import concept_probe.extraction._engine as engine
from concept_probe.errors import CorruptFileError
from concept_probe.extraction import Activations, extract_image_activations

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    return timm.create_model("resnet18", pretrained=False, num_classes=3).eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        embed_dim=32,
        depth=2,
        num_heads=2,
        num_classes=3,
        reg_tokens=2,
    ).eval()


def images(n, size=64, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def plain_outputs(model, layer, x, batch_size):
    """The layer's output from plain forward passes over the same batches."""
    module = dict(model.named_modules())[layer]
    outs = []
    handle = module.register_forward_hook(lambda m, i, o: outs.append(o))
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            model(x[s : s + batch_size])
    handle.remove()
    return torch.cat(outs)


def test_spatial_rows_equal_the_layer_output_exactly(resnet):
    x = images(5)
    acts = extract_image_activations(resnet, ["layer2", "layer3"], x, batch_size=2, progress=False)
    for layer, acts_l in acts.items():
        ref = plain_outputs(resnet, layer, x, 2)  # (5, C, h, w)
        n, C, h, w = ref.shape
        assert acts_l.kind == "spatial" and acts_l.grid == (h, w)
        assert acts_l.A.shape == (n * h * w, C) and acts_l.A.dtype == torch.float32
        for r in range(acts_l.n_rows):
            i, (y, xx) = int(acts_l.sample[r]), acts_l.position[r].tolist()
            assert torch.equal(acts_l.A[r], ref[i, :, y, xx])
        # sample-major, raster order
        assert acts_l.sample.tolist() == sorted(acts_l.sample.tolist())
        assert acts_l.position[: h * w].tolist() == [[y, xx] for y in range(h) for xx in range(w)]
        assert acts_l.meta["layer"] == layer and acts_l.meta["model"] == "resnet18"
        assert acts_l.sample_ids == [f"tensor[{i}]" for i in range(5)]
    assert resnet.training is False and all(not m._forward_hooks for m in resnet.modules())


def test_pooled_rows_are_spatial_means(resnet):
    x = images(3)
    acts = extract_image_activations(resnet, "layer3", x, mode="pooled", progress=False)
    ref = plain_outputs(resnet, "layer3", x, 32)
    assert acts.kind == "pooled" and acts.position is None and acts.grid == ref.shape[2:]
    assert torch.allclose(acts.A, ref.mean(dim=(2, 3)), atol=1e-6)
    head = extract_image_activations(resnet, "fc", x, mode="pooled", progress=False)
    assert torch.equal(head.A, resnet(x).detach())
    with pytest.raises(ValueError, match="mode='pooled'"):
        extract_image_activations(resnet, "fc", x, progress=False)


def test_vit_patch_tokens_map_onto_their_grid(vit):
    x = images(3, size=32)
    ref = plain_outputs(vit, "blocks.1", x, 32)  # (3, 2 regs + 1 cls + 16 patches, 32)
    assert ref.shape[1] == 3 + 16 and vit.num_prefix_tokens == 3
    acts = extract_image_activations(vit, "blocks.1", x, progress=False)
    assert acts.grid == (4, 4) and acts.n_rows == 3 * 16
    assert acts.meta["n_prefix_tokens"] == 3
    for r in range(acts.n_rows):
        i, (y, xx) = int(acts.sample[r]), acts.position[r].tolist()
        assert torch.equal(acts.A[r], ref[i, 3 + 4 * y + xx])
    both = extract_image_activations(vit, "blocks.1", x, include_tokens="all", progress=False)
    rows0 = both.rows_of(0)
    assert both.position[rows0[:3]].tolist() == [[-1, 0], [-1, 1], [-1, 2]]
    assert torch.equal(both.A[rows0[:3]], ref[0, :3])
    assert torch.equal(both.A[rows0[3:]], acts.A[acts.rows_of(0)])
    cls = extract_image_activations(vit, "blocks.1", x, include_tokens="prefix", progress=False)
    assert cls.n_rows == 9 and bool((cls.position[:, 0] == -1).all())
    pooled = extract_image_activations(vit, "blocks.1", x, mode="pooled", progress=False)
    assert torch.allclose(pooled.A, ref[:, 3:].mean(dim=1), atol=1e-6)


def test_token_grid_inferred_without_patch_embed():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Conv2d(3, 6, 4, stride=4)
            self.block = nn.Identity()

        def forward(self, x):
            t = self.proj(x).flatten(2).transpose(1, 2)  # (B, 9, 6)
            cls = torch.zeros(x.shape[0], 1, 6)
            return self.block(torch.cat([cls, t], dim=1))

    model, x = Tokens(), images(2, size=12)
    acts = extract_image_activations(model, "block", x, progress=False)
    assert acts.grid == (3, 3) and acts.meta["token_grid_inferred"] is True
    ref = model.proj(x)
    assert torch.equal(acts.A[acts.rows_of(1)][5], ref[1, :, 1, 2])


def test_subsampling_is_seeded_per_image_and_kept_in_raster_order(resnet):
    x = images(5)
    a = extract_image_activations(
        resnet, "layer3", x, rows_per_image=3, batch_size=2, progress=False
    )
    b = extract_image_activations(
        resnet, "layer3", x, rows_per_image=3, batch_size=5, progress=False
    )
    c = extract_image_activations(resnet, "layer3", x, rows_per_image=3, seed=1, progress=False)
    full = extract_image_activations(resnet, "layer3", x, progress=False)
    assert a.n_rows == 15 and torch.equal(a.position, b.position) and torch.equal(a.A, b.A)
    assert not torch.equal(a.position, c.position)
    _, w = full.grid
    for i in range(5):
        pos = a.position[a.rows_of(i)]
        flat = (pos[:, 0] * w + pos[:, 1]).tolist()
        assert flat == sorted(flat) and len(set(flat)) == 3
        assert torch.equal(a.A[a.rows_of(i)], full.A[full.rows_of(i)][flat])
    heat = a.heatmaps(torch.ones(a.n_rows, 1))
    assert int(heat.sum()) == 15  # dropped positions are 0
    capped = extract_image_activations(resnet, "layer3", x, max_rows=12, progress=False)
    assert capped.n_rows == 12
    assert sorted(torch.bincount(capped.sample).tolist()) == [2, 2, 2, 3, 3]
    # Fewer rows than images: the images that keep a row are a seeded random set, not the
    # first ones (a class-sorted folder would otherwise lose whole classes).
    few = extract_image_activations(resnet, "layer3", images(40), max_rows=10, progress=False)
    kept = few.sample.unique()
    assert few.n_rows == 10 and kept.numel() == 10
    assert kept.max() >= 20, kept.tolist()
    with pytest.raises(ValueError, match="pooled"):
        extract_image_activations(resnet, "layer3", x, mode="pooled", max_rows=3, progress=False)


def solid(colour, size=40):
    return Image.new("RGB", (size, size), colour)


def test_pil_images_use_the_timm_preprocessing_and_keep_unnormalised_images(vit):
    pics = [solid((255, 0, 0)), solid((10, 200, 30))]
    acts = extract_image_activations(vit, "blocks.0", pics, progress=False)
    assert "timm data config" in acts.meta["transform"]
    assert acts.images.shape == (2, 32, 32, 3) and acts.images.dtype == torch.uint8
    assert (acts.images[0].int() - torch.tensor([255, 0, 0])).abs().max() <= 1
    assert (acts.images[1].int() - torch.tensor([10, 200, 30])).abs().max() <= 1
    assert acts.sample_ids == ["image[0]", "image[1]"]
    # same rows as the preprocessed tensor fed directly
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(vit)
    cfg["input_size"] = (3, 32, 32)
    t = create_transform(**cfg)
    direct = extract_image_activations(
        vit, "blocks.0", torch.stack([t(p) for p in pics]), progress=False
    )
    assert torch.equal(acts.A, direct.A)


def test_preprocessing_is_decided_once_and_recorded_with_its_sources(vit):
    import dataclasses

    from concept_probe.extraction._vision_inputs import decide_preprocessing

    pre = decide_preprocessing(vit, "pil", None, None)
    assert pre.input_size == (3, 32, 32) and pre.source["mean"] == "timm data config"
    with pytest.raises(dataclasses.FrozenInstanceError):
        pre.mean = (0.0,)
    with pytest.raises(TypeError):
        pre.source["mean"] = "edited"
    # A tensor is used as given: the timm config says nothing about it.
    given = decide_preprocessing(vit, "tensor", None, ([0.5] * 3, [0.25] * 3))
    assert given.transform is None and given.input_size is None
    assert given.source == {
        "input_size": "none",
        "crop_pct": "none",
        "interpolation": "none",
        "mean": "normalization argument",
        "std": "normalization argument",
    }
    acts = extract_image_activations(vit, "blocks.0", [solid((1, 2, 3))], progress=False)
    rec = acts.meta["preprocessing"]
    assert rec["input_size"] == [3, 32, 32] and rec["mean"] == list(pre.mean)
    assert rec["interpolation"] == pre.interpolation and rec["crop_pct"] == pre.crop_pct
    assert set(rec["source"].values()) == {"timm data config"}


def test_user_transform_and_non_timm_models():
    tv = pytest.importorskip("torchvision.transforms")
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    pics = [solid((200, 100, 50), size=20)]
    with pytest.raises(ValueError, match="transform="):
        extract_image_activations(net, "1", pics, progress=False)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    tf = tv.Compose([tv.Resize(16), tv.ToTensor(), tv.Normalize(mean, std)])
    acts = extract_image_activations(net, "1", pics, transform=tf, progress=False)
    assert acts.grid == (16, 16) and acts.meta["image_normalization"]["mean"] == pytest.approx(
        list(mean)
    )
    assert (acts.images[0].int() - torch.tensor([200, 100, 50])).abs().max() <= 1
    with pytest.raises(ValueError, match="used as given"):
        extract_image_activations(net, "1", images(1), transform=tf, progress=False)


def test_tensor_thumbnails_minmax_or_known_normalisation_and_size_cap(resnet):
    x = images(2, size=64)
    acts = extract_image_activations(resnet, "layer1", x, progress=False)
    assert acts.images.shape == (2, 64, 64, 3) and acts.meta["image_normalization"] == "minmax"
    assert int(acts.images[0].min()) == 0 and int(acts.images[0].max()) == 255
    small = extract_image_activations(resnet, "layer1", x, max_image_size=32, progress=False)
    assert small.images.shape == (2, 32, 32, 3) and small.grid == acts.grid
    raw = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.3, 0.4]
    norm = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    net = nn.Sequential(nn.Conv2d(3, 2, 1))
    a = extract_image_activations(net, "0", norm, normalization=(mean, std), progress=False)
    want = (raw[0].permute(1, 2, 0) * 255).round()
    assert (a.images[0].float() - want).abs().max() <= 1
    none = extract_image_activations(net, "0", norm, keep_images=False, progress=False)
    assert none.images is None


def write_images(folder, spec):
    for rel, colour in spec.items():
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        solid(colour, size=36).save(p)


def test_folder_with_class_subfolders_and_non_image_files(tmp_path, vit):
    write_images(
        tmp_path,
        {"cat/a.png": (255, 0, 0), "cat/b.jpg": (0, 255, 0), "dog/c.webp": (0, 0, 255)},
    )
    (tmp_path / "dog" / "readme.txt").write_text("not an image")
    (tmp_path / ".hidden.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="1 non-image file"):
        acts = extract_image_activations(vit, "blocks.1", tmp_path, progress=False)
    assert acts.n_samples == 3 and acts.label_names == ["cat", "dog"]
    assert acts.labels.tolist() == [0, 0, 1]
    assert acts.sample_ids == [str(tmp_path / r) for r in ("cat/a.png", "cat/b.jpg", "dog/c.webp")]
    assert acts.meta["n_skipped_files"] == 1
    assert (acts.images[2].int() - torch.tensor([0, 0, 255])).abs().max() <= 2
    one = extract_image_activations(vit, "blocks.1", tmp_path / "cat" / "a.png", progress=False)
    assert one.n_samples == 1 and one.labels is None


def test_bad_folders_and_bad_files(tmp_path, vit):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="is empty"):
        extract_image_activations(vit, "blocks.1", empty, progress=False)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no image files.*'a\.txt'"):
        extract_image_activations(vit, "blocks.1", docs, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        extract_image_activations(vit, "blocks.1", tmp_path / "missing", progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"could not read 1 of 1 image files.*x\.png' \(cannot"):
        extract_image_activations(vit, "blocks.1", broken, progress=False)


def test_bad_arguments_have_clear_errors(resnet):
    x = images(2)
    with pytest.raises(ValueError, match=r"unsqueeze\(0\)"):
        extract_image_activations(resnet, "layer1", x[0], progress=False)
    with pytest.raises(TypeError, match="must be float"):
        extract_image_activations(resnet, "layer1", (x * 50).byte(), progress=False)
    with pytest.raises(ValueError, match="mode must be"):
        extract_image_activations(resnet, "layer1", x, mode="tokens", progress=False)
    with pytest.raises(ValueError, match="include_tokens"):
        extract_image_activations(resnet, "layer1", x, include_tokens="cls", progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        extract_image_activations(resnet, "layer1", x, batch_size=0, progress=False)
    with pytest.raises(TypeError, match="images must be"):
        extract_image_activations(resnet, "layer1", 42, progress=False)
    with pytest.raises(TypeError, match="PIL images"):
        extract_image_activations(resnet, "layer1", [x[0]], progress=False)
    with pytest.raises(ValueError, match="empty"):
        extract_image_activations(resnet, "layer1", [], progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            extract_image_activations(resnet, "layer1", x, device="cuda", progress=False)


class LabelledImages(Dataset):
    def __init__(self, x, fail_at=None):
        self.x, self.fail_at, self.calls = x, fail_at, []

    def __len__(self):
        return self.x.shape[0]

    def __getitem__(self, i):
        self.calls.append(i)
        if i == self.fail_at:
            raise KeyboardInterrupt  # a user pressing Ctrl-C mid-extraction
        return self.x[i], i % 2


def test_datasets_and_dataloaders(resnet):
    x = images(5)
    ref = extract_image_activations(resnet, "layer3", x, progress=False)
    ds = extract_image_activations(
        resnet, "layer3", LabelledImages(x), batch_size=2, progress=False
    )
    assert torch.equal(ds.A, ref.A) and ds.labels.tolist() == [0, 1, 0, 1, 0]
    assert ds.sample_ids[1] == "dataset[1]"
    loader = DataLoader(TensorDataset(x, torch.tensor([2, 1, 0, 1, 2])), batch_size=2)
    dl = extract_image_activations(resnet, "layer3", loader, progress=False)
    assert torch.equal(dl.A, ref.A) and dl.labels.tolist() == [2, 1, 0, 1, 2]
    assert dl.sample_ids[4] == "loader[4]"
    shuffled = DataLoader(TensorDataset(x), batch_size=2, shuffle=True)
    with pytest.raises(ValueError, match="shuffle"):
        extract_image_activations(resnet, "layer3", shuffled, out="unused", progress=False)


def test_streaming_to_disk_equals_in_memory(tmp_path, resnet, monkeypatch):
    monkeypatch.setattr(engine, "SHARD_BYTES", 20_000)  # several shards
    x = images(5)
    mem = extract_image_activations(
        resnet, ["layer2", "layer3"], x, batch_size=2, rows_per_image=7, progress=False
    )
    disk = extract_image_activations(
        resnet,
        ["layer2", "layer3"],
        x,
        batch_size=2,
        rows_per_image=7,
        out=tmp_path / "out",
        progress=False,
    )
    for layer in mem:
        m, d = mem[layer], disk[layer]
        for name in ("A", "sample", "position", "images"):
            assert torch.equal(getattr(m, name), getattr(d, name)), (layer, name)
        assert d.meta == m.meta and d.grid == m.grid and d.sample_ids == m.sample_ids
        folder = tmp_path / "out" / layer
        assert sorted(p.name for p in folder.iterdir()) == [
            "A.npy",
            "images.npy",
            "manifest.json",
            "position.npy",
            "sample.npy",
            "strings.json",
        ]
        assert torch.equal(Activations.load(folder).A, m.A)


def test_resume_after_an_interruption_recomputes_nothing_already_written(
    tmp_path, resnet, monkeypatch
):
    monkeypatch.setattr(engine, "SHARD_BYTES", 1)  # one shard per batch
    x = images(6)
    out = tmp_path / "acts"
    ref = extract_image_activations(resnet, "layer3", x, batch_size=2, progress=False)
    first = LabelledImages(x, fail_at=4)
    with pytest.raises(KeyboardInterrupt):
        extract_image_activations(resnet, "layer3", first, batch_size=2, out=out, progress=False)
    with pytest.raises(CorruptFileError, match=r"stopped after 4 of 6 samples.*resume"):
        Activations.load(out)
    progress = json.loads((out / "progress.json").read_text())
    assert [s["samples"] for s in progress["shards"]] == [[0, 2], [2, 4]]
    second = LabelledImages(x)
    acts = extract_image_activations(
        resnet, "layer3", second, batch_size=2, out=out, progress=False
    )
    assert sorted(set(second.calls) - {0}) == [4, 5]  # item 0 is only peeked at for its type
    assert torch.equal(acts.A, ref.A) and torch.equal(acts.position, ref.position)
    assert acts.labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert not (out / "progress.json").exists()
    # a finished folder is reused as it is ...
    third = LabelledImages(x)
    again = extract_image_activations(
        resnet, "layer3", third, batch_size=2, out=out, progress=False
    )
    assert third.calls == [0] and torch.equal(again.A, ref.A)
    # ... but never for different settings
    with pytest.raises(ValueError, match="differs in: rows_per_image"):
        extract_image_activations(
            resnet, "layer3", LabelledImages(x), rows_per_image=2, out=out, progress=False
        )


def test_resume_skips_a_damaged_shard_and_redoes_it(tmp_path, resnet, monkeypatch):
    monkeypatch.setattr(engine, "SHARD_BYTES", 1)
    x = images(6)
    out = tmp_path / "acts"
    with pytest.raises(KeyboardInterrupt):
        extract_image_activations(
            resnet, "layer3", LabelledImages(x, fail_at=5), batch_size=2, out=out, progress=False
        )
    shard = out / "A-00001.npy"
    shard.write_bytes(shard.read_bytes()[:100])  # damaged after it was recorded
    second = LabelledImages(x)
    acts = extract_image_activations(
        resnet, "layer3", second, batch_size=2, out=out, progress=False
    )
    assert sorted(set(second.calls) - {0}) == [2, 3, 4, 5]
    ref = extract_image_activations(resnet, "layer3", x, batch_size=2, progress=False)
    assert torch.equal(acts.A, ref.A)


def test_out_refuses_a_folder_with_other_files(tmp_path, resnet):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="refusing"):
        extract_image_activations(resnet, "layer3", images(1), out=tmp_path, progress=False)
    assert np.array_equal(sorted(p.name for p in tmp_path.iterdir()), ["notes.txt"])


# ------------------------------------------------------------------ bring your own model
def _tiny(**kwargs):
    from _byo_model import TinyNet

    torch.manual_seed(0)
    return TinyNet(**kwargs).eval()


def test_data_config_overrides_build_the_transform_and_are_recorded():
    import re

    from timm.data import create_transform

    net = _tiny(width=4)
    pics = [solid((200, 30, 60)), solid((20, 90, 160))]
    acts = extract_image_activations(
        net, "layer2", pics, input_size=16, mean=(0.5,) * 3, std=(0.25,) * 3, progress=False
    )
    assert acts.grid == (8, 8)
    rec = acts.meta["preprocessing"]
    assert rec["input_size"] == [3, 16, 16] and rec["mean"] == [0.5] * 3
    assert rec["source"] == {
        "input_size": "argument",
        "crop_pct": "timm default",
        "interpolation": "timm default",
        "mean": "argument",
        "std": "argument",
    }
    t = create_transform(
        input_size=(3, 16, 16),
        crop_pct=0.875,
        interpolation="bicubic",
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
    )
    direct = extract_image_activations(
        net, "layer2", torch.stack([t(p) for p in pics]), progress=False
    )
    assert torch.equal(acts.A, direct.A)
    with pytest.raises(ValueError, match=re.escape("give input_size= too (CLI: --input-size)")):
        extract_image_activations(net, "layer2", pics, mean=(0.5,) * 3, progress=False)
    with pytest.raises(ValueError, match="tensors used as given"):
        extract_image_activations(net, "layer2", images(1), input_size=16, progress=False)
    for bad, needle in (
        ({"input_size": 0}, "input_size must be"),
        ({"input_size": (3, 16, 16, 1)}, "input_size must be"),
        ({"crop_pct": 1.5}, "crop_pct must be"),
        ({"interpolation": "cubic"}, "interpolation must be one of"),
        ({"std": (0.2, 0.0, 0.2)}, "std must be 1 or 3 positive floats"),
        ({"mean": (0.1, 0.2)}, "mean must be 1 or 3 floats"),
    ):
        with pytest.raises(ValueError, match=needle):
            extract_image_activations(net, "layer2", pics, progress=False, **bad)


def test_small_images_warn_once_with_the_fix():
    import re

    from concept_probe.errors import PreprocessingWarning

    net = _tiny(width=4)
    pics = [solid((200, 30, 60), size=8) for _ in range(3)]
    msg = (
        "3 of 3 images are upsampled more than 2x to the model's 32 x 32 input (median image "
        "8 x 8 px, 4x), so the model sees them blurred and out of scale. If it was trained on "
        "small images, give their size: input_size=8 (CLI: --input-size 8)."
    )
    with pytest.warns(PreprocessingWarning, match=f"^{re.escape(msg)}$") as record:
        acts = extract_image_activations(net, "layer2", pics, input_size=32, progress=False)
    assert len(record) == 1
    assert acts.meta["image_sizes"] == {
        "n_images": 3,
        "median_size": [8, 8],
        "model_input": [32, 32],
        "n_upsampled_2x": 3,
        "median_upsampling": 4.0,
    }
    extract_image_activations(net, "layer2", pics, input_size=8, progress=False)  # no warning


def test_checkpoint_preprocessing_that_disagrees_warns(tmp_path, monkeypatch):
    import re

    from concept_probe.errors import PreprocessingWarning
    from concept_probe.extraction import load_vision_model

    monkeypatch.chdir(Path(__file__).parent)
    cfg = {"input_size": [3, 16, 16], "mean": [0.5] * 3, "std": [0.5] * 3}
    sd = _tiny(width=4).state_dict()
    torch.save({"state_dict": sd, "data_config": cfg}, tmp_path / "w.pth")
    net = load_vision_model("_byo_model:TinyNet", checkpoint=tmp_path / "w.pth", width=4)
    pics = [solid((1, 2, 3), size=32)]
    msg = (
        f"checkpoint {str(tmp_path / 'w.pth')!r} records a preprocessing other than the one in "
        f"use: input_size (16, 16) (in use: (32, 32), from argument); mean (0.5, 0.5, 0.5) (in "
        f"use: (0.485, 0.456, 0.406), from timm default); std (0.5, 0.5, 0.5) (in use: (0.229, "
        f"0.224, 0.225), from timm default). Pass the checkpoint's values"
    )
    with pytest.warns(PreprocessingWarning, match=re.escape(msg)):
        extract_image_activations(net, "layer2", pics, input_size=32, progress=False)
    same = dict(input_size=16, mean=(0.5,) * 3, std=(0.5,) * 3)
    extract_image_activations(net, "layer2", pics, progress=False, **same)  # no warning


def test_classifier_accuracy_on_a_labelled_folder(tmp_path):
    net = _tiny(width=4, num_classes=2)
    colours = {"cat": [(250, 10, 10), (200, 40, 20)], "dog": [(10, 10, 250), (30, 60, 200)]}
    for cls, cols in colours.items():
        (tmp_path / cls).mkdir()
        for i, c in enumerate(cols):
            solid(c, size=16).save(tmp_path / cls / f"{i}.png")
    acts = extract_image_activations(
        net, "layer1", tmp_path, input_size=16, predictions=True, progress=False
    )
    pre = acts.meta["preprocessing"]
    from timm.data import create_transform

    t = create_transform(
        input_size=tuple(pre["input_size"]),
        crop_pct=pre["crop_pct"],
        interpolation=pre["interpolation"],
        mean=pre["mean"],
        std=pre["std"],
    )
    x = torch.stack([t(Image.open(p).convert("RGB")) for p in acts.sample_ids])
    with torch.no_grad():
        pred = net(x).argmax(1)
    correct = int((pred == acts.labels).sum())
    assert acts.meta["predictions"] == {
        "n_classes": 2,
        "n_images": 4,
        "n_labelled": 4,
        "n_correct": correct,
        "accuracy": correct / 4,
    }
    # Rows are unchanged by the full forward pass.
    plain = extract_image_activations(net, "layer1", tmp_path, input_size=16, progress=False)
    assert torch.equal(plain.A, acts.A) and "predictions" not in plain.meta
    # A model without logits records nothing.
    feats = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())
    none = extract_image_activations(feats, "1", images(2), predictions=True, progress=False)
    assert "predictions" not in none.meta


def test_a_failing_forward_pass_is_one_readable_error():
    from concept_probe.errors import ForwardPassError

    net = _tiny(width=4)
    with pytest.raises(
        ForwardPassError,
        match=r"^the forward pass of TinyNet failed on inputs "
        r"\(2, 1, 16, 16\) \(RuntimeError: .*their size \(input_size=",
    ):
        extract_image_activations(net, "layer2", images(2, size=16)[:, :1], progress=False)


def test_out_at_a_broken_link_is_refused_before_the_first_batch(tmp_path):
    """out= a dangling link failed with a bare '[Errno 17] File exists' (creating the folder);
    it names the link and the fix now, and nothing is written."""
    net = nn.Sequential(nn.Conv2d(3, 2, 3))
    out = tmp_path / "acts"
    out.symlink_to(tmp_path / "gone")
    with pytest.raises(NotADirectoryError, match=r"acts is a broken symbolic link"):
        extract_image_activations(net, "0", images(2, size=8), out=out, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["acts"]


def test_a_resume_with_predictions_off_records_none_as_an_uninterrupted_run(tmp_path, monkeypatch):
    """predictions= is not in the fingerprint (the rows are the same): a run stopped with
    predictions=True and resumed with predictions=False recorded the first session's tally
    (4 of 8 images) though the same arguments uninterrupted record none."""
    monkeypatch.setattr(engine, "SHARD_BYTES", 1)  # a shard a batch
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    x = images(8, size=8)
    kw = {"batch_size": 2, "progress": False}
    whole = extract_image_activations(net, "0", LabelledImages(x), **kw)
    with pytest.raises(KeyboardInterrupt):
        extract_image_activations(
            net, "0", LabelledImages(x, fail_at=4), out=tmp_path, predictions=True, **kw
        )
    resumed = extract_image_activations(net, "0", LabelledImages(x), out=tmp_path, **kw)
    assert "predictions" not in resumed.meta and resumed.meta == whole.meta


def test_a_resume_with_predictions_turned_on_marks_its_tally_partial(tmp_path, monkeypatch):
    """The other way: stopped without predictions, resumed with them. The tally covers only
    the resumed batches (the first session ran none); it says so, and so does the report."""
    from concept_probe.visualization.report import accuracy_line

    monkeypatch.setattr(engine, "SHARD_BYTES", 1)  # a shard a batch
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2))
    x = images(8, size=8)
    kw = {"batch_size": 2, "progress": False}
    whole = extract_image_activations(net, "0", LabelledImages(x), predictions=True, **kw)
    assert "partial" not in whole.meta["predictions"]
    assert "Only the inputs" not in accuracy_line(whole.meta)
    with pytest.raises(KeyboardInterrupt):
        extract_image_activations(net, "0", LabelledImages(x, fail_at=4), out=tmp_path, **kw)
    resumed = extract_image_activations(
        net, "0", LabelledImages(x), out=tmp_path, predictions=True, **kw
    )
    p = resumed.meta["predictions"]
    assert p["partial"] is True and p["n_images"] < whole.meta["predictions"]["n_images"]
    assert "Only the inputs extracted with predictions on are counted" in accuracy_line(
        resumed.meta
    )
