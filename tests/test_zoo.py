"""The built-in demo: shapes data, cell labels, and the shipped checkpoint."""

import json
import shutil

import numpy as np
import pytest
import torch

from concept_probe.errors import CorruptFileError
from concept_probe.zoo import (
    DEMO_MEAN,
    DEMO_STD,
    FACTORS,
    ShapesDataset,
    cell_factor_labels,
    demo_checkpoint_path,
    demo_metadata,
    joint_class_names,
    load_demo_model,
    make_shapes,
    normalize_images,
)
from concept_probe.zoo.data import _RGB
from concept_probe.zoo.model import read_checkpoint, write_checkpoint
from concept_probe.zoo.train import evaluate


@pytest.fixture(scope="module")
def data():
    return make_shapes(40, seed=7)


@pytest.fixture(scope="module")
def model():
    return load_demo_model()


# --- data -------------------------------------------------------------------------------


def test_same_seed_same_data(data):
    again = make_shapes(40, seed=7)
    assert torch.equal(again.images, data.images)
    assert torch.equal(again.targets, data.targets)
    for f in FACTORS:
        assert torch.equal(again.factor_maps[f], data.factor_maps[f])
    assert again.objects == data.objects


def test_other_seed_other_data(data):
    other = make_shapes(40, seed=8)
    assert not torch.equal(other.images, data.images)
    assert other.objects != data.objects


def test_shapes_and_dtypes(data):
    assert data.images.shape == (40, 64, 64, 3) and data.images.dtype == torch.uint8
    assert set(data.factor_maps) == set(FACTORS)
    for f, m in data.factor_maps.items():
        assert m.shape == (40, 64, 64) and m.dtype == torch.int64
        assert int(m.min()) >= -1 and int(m.max()) < len(FACTORS[f])
    assert data.targets.shape == (40, len(joint_class_names()))
    assert len(data) == 40 and len(data.objects) == 40
    small = make_shapes(3, seed=0, image_size=48)
    assert small.images.shape == (3, 48, 48, 3)


def test_object_counts_follow_arguments():
    d = make_shapes(60, seed=1, min_objects=2, max_objects=4)
    counts = [len(o) for o in d.objects]
    assert min(counts) >= 2 and max(counts) <= 4 and len(set(counts)) > 1
    assert {len(o) for o in make_shapes(10, seed=1, min_objects=1, max_objects=1).objects} == {1}


def test_factor_maps_agree_with_objects(data):
    maps = data.factor_maps
    names = {f: FACTORS[f] for f in FACTORS}
    for i, objs in enumerate(data.objects):
        # background is background in every factor at once
        bg = maps["shape"][i] < 0
        for f in FACTORS:
            assert torch.equal(maps[f][i] < 0, bg)
        # the pixel under each object's centre carries its values
        for o in objs:
            y, x = (int(v) for v in o["centre"])
            for f in FACTORS:
                assert names[f][int(maps[f][i, y, x])] == o[f]
        # the value combinations in the maps are exactly the image's objects
        fg = ~bg
        combos = set(zip(*(maps[f][i][fg].tolist() for f in FACTORS), strict=True))
        expected = {tuple(names[f].index(o[f]) for f in FACTORS) for o in objs}
        assert combos == expected
        # the multi-hot target lists the objects' joint classes
        assert set(torch.nonzero(data.targets[i]).flatten().tolist()) == {o["joint"] for o in objs}
        for o in objs:
            assert joint_class_names()[o["joint"]] == f"{o['colour']} {o['texture']} {o['shape']}"


def test_objects_do_not_overlap_and_have_their_size(data):
    for i, objs in enumerate(data.objects):
        if len(objs) < 2:
            continue
        c = np.array([o["centre"] for o in objs])
        r = np.array([o["size"] for o in objs])
        dist = np.linalg.norm(c[:, None] - c[None], axis=-1)
        off = ~np.eye(len(objs), dtype=bool)
        assert (dist[off] >= (r[:, None] + r[None])[off]).all()
    sizes = [o["size"] for objs in data.objects for o in objs]
    assert 0.40 * 32 - 1e-9 <= min(sizes) and max(sizes) <= 0.48 * 32 + 1e-9


def test_pixels_show_the_object_colour(data):
    img = data.images.float() / 255
    palette = torch.from_numpy(_RGB)
    palette = palette / palette.norm(dim=1, keepdim=True)
    for i, objs in enumerate(data.objects):
        for o in objs:
            sel = (data.factor_maps["colour"][i] == FACTORS["colour"].index(o["colour"])) & (
                data.factor_maps["shape"][i] == FACTORS["shape"].index(o["shape"])
            )
            mean = img[i][sel].mean(0)
            nearest = int((palette @ (mean / mean.norm())).argmax())
            assert FACTORS["colour"][nearest] == o["colour"]


def test_textures_differ_in_pixel_variation():
    d = make_shapes(120, seed=3, noise=0.0)
    img = d.images.float() / 255
    spread = {t: [] for t in FACTORS["texture"]}
    for i, objs in enumerate(d.objects):
        for o in objs:
            sel = d.factor_maps["shape"][i] >= 0
            sel &= d.factor_maps["texture"][i] == FACTORS["texture"].index(o["texture"])
            sel &= d.factor_maps["colour"][i] == FACTORS["colour"].index(o["colour"])
            sel &= d.factor_maps["shape"][i] == FACTORS["shape"].index(o["shape"])
            spread[o["texture"]].append(float(img[i][sel].max(dim=1).values.std()))
    solid, striped, dotted = (np.median(spread[t]) for t in ("solid", "striped", "dotted"))
    assert solid < 0.05 < dotted < striped


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "n must be a positive integer; got 0"),
        ({"n": 4, "image_size": 16}, "image_size must be an integer >= 32; got 16. Stripes"),
        ({"n": 4, "min_objects": 3, "max_objects": 2}, "must not exceed max_objects"),
        ({"n": 4, "max_objects": 10}, r"max_objects must be an integer in \[1, 9\]; got 10"),
        ({"n": 4, "size_range": (0.2, 0.7)}, "size_range must satisfy"),
        ({"n": 4, "size_range": 0.3}, "size_range must be two numbers"),
        ({"n": 4, "noise": -0.1}, "noise must be a finite number >= 0; got -0.1"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    n = kwargs.pop("n")
    with pytest.raises(ValueError, match=match):
        make_shapes(n, **kwargs)


def test_non_integer_arguments_raise_type_error():
    with pytest.raises(TypeError, match=r"n must be a positive integer; got 2.5 \(float\)"):
        make_shapes(2.5)
    with pytest.raises(TypeError, match=r"seed must be an integer >= 0; got 'a' \(str\)"):
        make_shapes(2, seed="a")
    assert make_shapes(np.int64(2), image_size=np.int64(32), seed=np.int64(0)).images.shape[0] == 2


def test_cell_labels_on_a_hand_made_map():
    m = torch.full((1, 8, 8), -1, dtype=torch.long)
    m[0, :4, :4] = 2  # fills cell (0, 0) of a 2x2 grid
    m[0, 4:6, 4:8] = 1  # half of cell (1, 1)
    m[0, 0:2, 5:8] = 0  # 6/16 of cell (0, 1)
    lab = cell_factor_labels({"f": m}, (2, 2))["f"]
    assert lab.tolist() == [[[2, -1], [-1, 1]]]
    lab = cell_factor_labels({"f": m}, (2, 2), min_fraction=0.3)["f"]
    assert lab.tolist() == [[[2, 0], [-1, 1]]]
    assert cell_factor_labels({"f": m}, (1, 1), min_fraction=0.0)["f"].tolist() == [[[2]]]


def test_cell_labels_shapes_and_values(data):
    for grid in [(4, 4), (8, 8), (3, 5), (64, 64)]:
        labels = cell_factor_labels(data.factor_maps, grid)
        assert set(labels) == set(FACTORS)
        for f, lab in labels.items():
            assert lab.shape == (40, *grid) and lab.dtype == torch.int64
            assert int(lab.min()) >= -1 and int(lab.max()) < len(FACTORS[f])
    # at full resolution the labels are the maps themselves
    full = cell_factor_labels(data.factor_maps, (64, 64))
    for f in FACTORS:
        assert torch.equal(full[f], data.factor_maps[f])
    # every labelled 4x4 cell lies mostly on an object with that value
    lab = cell_factor_labels(data.factor_maps, (4, 4))["colour"]
    cells = data.factor_maps["colour"].view(40, 4, 16, 4, 16).permute(0, 1, 3, 2, 4)
    share = (cells == lab[..., None, None]).float().mean(dim=(-1, -2))
    assert (share[lab >= 0] >= 0.5).all()
    assert (lab >= 0).any()


def test_cell_labels_bad_input(data):
    with pytest.raises(ValueError, match="grid"):
        cell_factor_labels(data.factor_maps, (0, 4))
    with pytest.raises(ValueError, match="grid must be a pair"):
        cell_factor_labels(data.factor_maps, 4)
    with pytest.raises(ValueError, match=r"shape \(n, H, W\)"):
        cell_factor_labels({"shape": torch.zeros(4, 4, dtype=torch.long)}, (2, 2))


def test_dataset_yields_normalised_tensors_and_targets(data):
    ds = ShapesDataset(data)
    x, y = ds[3]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    raw = data.images[3].permute(2, 0, 1).float() / 255
    mean = torch.tensor(DEMO_MEAN).view(3, 1, 1)
    std = torch.tensor(DEMO_STD).view(3, 1, 1)
    torch.testing.assert_close(x, (raw - mean) / std)
    assert torch.equal(y, data.targets[3])
    _, j = ShapesDataset(data, target="joint")[3]
    assert j == data.objects[3][0]["joint"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert batch[0].shape == (5, 3, 64, 64) and batch[1].shape == (5, 48)
    with pytest.raises(ValueError, match="target must be"):
        ShapesDataset(data, target="shape")
    with pytest.raises(TypeError, match="ShapesData"):
        ShapesDataset(data.images)


# --- the shipped model ------------------------------------------------------------------


def test_checkpoint_is_small_and_its_metadata_complete():
    path = demo_checkpoint_path()
    assert path.is_file()
    assert path.stat().st_size < 5 * 1024 * 1024
    meta = demo_metadata()
    assert meta["model_name"] == "resnet18"
    assert meta["data_config"]["input_size"] == [3, 64, 64]
    assert meta["data_config"]["mean"] == list(DEMO_MEAN)
    assert meta["data_config"]["std"] == list(DEMO_STD)
    assert meta["factors"] == FACTORS
    assert meta["classes"] == joint_class_names()
    assert meta["accuracy"]["exact_match"] >= 0.97
    assert meta["recommended_layer"] in meta["layer_probes"]
    probe = meta["layer_probes"][meta["recommended_layer"]]
    assert probe["grid"] == meta["recommended_grid"]
    for f in FACTORS:
        assert probe[f] > 0.9
    json.dumps(meta)  # JSON-able all the way down
    meta["accuracy"] = None  # callers get a copy: the cached metadata is untouched
    assert demo_metadata()["accuracy"] is not None


def test_shipped_model_is_accurate_on_fresh_images(model):
    # seed never used by the training script (training uses 1..epochs, evaluation 9_997..9_999)
    fresh = make_shapes(200, seed=424_242)
    acc = evaluate(model, fresh)
    assert acc["exact_match"] >= 0.95, acc
    for f in FACTORS:
        assert acc[f] >= 0.97, acc


def test_timm_resolves_the_demo_data_config(model):
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config(model=model)
    assert cfg["input_size"] == (3, 64, 64)
    assert tuple(cfg["mean"]) == DEMO_MEAN and tuple(cfg["std"]) == DEMO_STD
    # timm's own eval transform gives the same tensors as the package's normalisation
    data = make_shapes(2, seed=5)
    x_timm = ShapesDataset(data, transform=create_transform(**cfg))[1][0]
    torch.testing.assert_close(x_timm, normalize_images(data.images[1]), atol=1e-5, rtol=0)


def test_model_is_eval_mode_float32_with_expected_layers(model):
    assert not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = normalize_images(make_shapes(2, seed=0).images)
    grids = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda _m, _i, out, name=name: grids.__setitem__(name, tuple(out.shape[1:]))
        )
        for name in ("layer2", "layer3", "layer4")
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    # layer4 is dilated (output_stride=16): the same 4 x 4 grid as layer3 at 64 px
    assert grids == {"layer2": (32, 8, 8), "layer3": (64, 4, 4), "layer4": (128, 4, 4)}


def test_corrupt_checkpoints_raise_corrupt_file_error(tmp_path):
    src = demo_checkpoint_path()
    blob = src.read_bytes()

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CorruptFileError, match=r"tensors cannot be read|header cannot be read"):
        load_demo_model(truncated)

    flipped = tmp_path / "flipped.safetensors"  # intact header, one weight byte changed
    damaged = bytearray(blob)
    damaged[-3] ^= 0xFF
    flipped.write_bytes(bytes(damaged))
    demo_metadata(flipped)  # the metadata alone still reads
    with pytest.raises(CorruptFileError, match="SHA-256"):
        load_demo_model(flipped)

    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CorruptFileError, match="header cannot be read"):
        load_demo_model(garbage)
    with pytest.raises(CorruptFileError, match=r"zoo\.train"):
        demo_metadata(garbage)

    from safetensors.torch import save_file

    no_meta = tmp_path / "no_meta.safetensors"
    save_file({"w": torch.zeros(2)}, str(no_meta))
    with pytest.raises(CorruptFileError, match="no 'concept_probe' metadata"):
        load_demo_model(no_meta)

    bad_json = tmp_path / "bad_json.safetensors"
    save_file({"w": torch.zeros(2)}, str(bad_json), metadata={"concept_probe": "{oops"})
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        demo_metadata(bad_json)

    wrong_tensors = tmp_path / "wrong.safetensors"
    meta = json.dumps(demo_metadata())
    save_file({"w": torch.zeros(2)}, str(wrong_tensors), metadata={"concept_probe": meta})
    with pytest.raises(CorruptFileError, match="do not fit the architecture"):
        load_demo_model(wrong_tensors)

    with pytest.raises(FileNotFoundError, match=r"zoo\.train"):
        load_demo_model(tmp_path / "missing.safetensors")


def test_write_checkpoint_round_trip_leaves_no_temporary_files(tmp_path, model):
    meta = demo_metadata()
    out = write_checkpoint(model, tmp_path / "sub" / "copy.safetensors", meta)
    assert sorted(p.name for p in out.parent.iterdir()) == ["copy.safetensors"]
    again, meta2 = read_checkpoint(out)
    assert meta2 == meta
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    shutil.rmtree(out.parent)


@pytest.mark.slow
def test_training_script_writes_a_loadable_checkpoint(tmp_path, capsys):
    from concept_probe.zoo.train import main

    out = tmp_path / "demo.safetensors"
    args = ["--out", str(out), "--epochs", "1", "--n-train", "128", "--n-eval", "50"]
    assert main(args) == 0
    assert "recommended layer" in capsys.readouterr().out
    model, meta = read_checkpoint(out)
    assert meta["epochs"] == 1 and meta["n_train"] == 128
    assert set(meta["layer_probes"]) == {"layer2", "layer3", "layer4"}
    assert 0.0 <= meta["accuracy"]["exact_match"] <= 1.0
    x = normalize_images(make_shapes(2, seed=0).images)
    assert model(x).shape == (2, 48)
