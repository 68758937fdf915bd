"""border=: extraction without the feature map's outer ring, and the report's border warning."""

import pytest
import torch
from torch import nn

import concept_probe as cp
from concept_probe.extraction import Activations, extract_image_activations


@pytest.fixture(scope="module")
def net_and_x():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    x = torch.randn(3, 3, 6, 5, generator=torch.Generator().manual_seed(1))
    return net, x


def test_border_keeps_exactly_the_inner_cells(net_and_x):
    net, x = net_and_x
    full = extract_image_activations(net, "1", x, progress=False, keep_images=False)
    inner = extract_image_activations(net, "1", x, border=1, progress=False, keep_images=False)
    assert inner.grid == full.grid == (6, 5)
    y, xx = inner.position[:, 0], inner.position[:, 1]
    assert bool(((y >= 1) & (y <= 4) & (xx >= 1) & (xx <= 3)).all())
    assert inner.n_rows == 3 * 4 * 3  # (6 - 2) x (5 - 2) cells per image
    keep = (full.position[:, 0] % 5 != 0) & (full.position[:, 1] % 4 != 0)
    torch.testing.assert_close(inner.A, full.A[keep], rtol=0, atol=0)
    assert torch.equal(inner.sample, full.sample[keep])
    assert inner.meta["border"] == 1
    # Subsampling draws from the inner cells only.
    some = extract_image_activations(
        net, "1", x, border=1, rows_per_image=5, progress=False, keep_images=False
    )
    assert some.n_rows == 15
    assert {tuple(p) for p in some.position.tolist()} <= {tuple(p) for p in inner.position.tolist()}


def test_border_larger_than_the_map_and_pooled_are_refused(net_and_x):
    net, x = net_and_x
    too_large = r"border=3 would leave out every cell of the 6 x 5 feature map of layer '1'; "
    with pytest.raises(ValueError, match=too_large + "use border <= 2"):
        extract_image_activations(net, "1", x, border=3, progress=False)
    with pytest.raises(ValueError, match="needs mode='spatial'"):
        extract_image_activations(net, "1", x, border=1, mode="pooled", progress=False)
    with pytest.raises(ValueError, match=r"border must be an integer >= 0; got -1"):
        extract_image_activations(net, "1", x, border=-1, progress=False)


def test_report_warns_when_a_concept_sits_on_the_border(tmp_path):
    h = w = 4
    n = 4
    yx = torch.tensor([[y, x] for y in range(h) for x in range(w)]).repeat(n, 1)
    sample = torch.arange(n).repeat_interleave(h * w)
    g = torch.Generator().manual_seed(0)
    acts = Activations(
        torch.rand(n * h * w, 3, generator=g),
        sample,
        yx,
        kind="spatial",
        grid=(h, w),
        images=torch.randint(0, 256, (n, 16, 16, 3), generator=g, dtype=torch.uint8),
    )
    nmf = cp.ConvexNMF(2, seed=0, tol=0)
    nmf.fit(acts.A, max_iter=3)
    ring = (yx[:, 0] % 3 == 0) | (yx[:, 1] % 3 == 0)
    W = torch.stack([ring.float() / ring.sum(), (~ring).float() / (~ring).sum()])
    nmf.W = W
    nmf.D = W @ acts.A
    Z = nmf.encode(acts.A)
    out = cp.write_report(nmf, acts, Z, tmp_path / "rep", k=2)
    index = (out / "index.html").read_text()
    # Concept 0's weight is all on the ring (12 of the 16 cells = 75% of the rows).
    assert index.count("class='warn'>Border:") == 1
    assert "100% of this concept's convex weight sits on the outer ring" in index
    assert "which holds 75% of the rows" in index
