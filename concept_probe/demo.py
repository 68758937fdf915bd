"""The built-in demo as functions: activations of the shipped model on fresh shapes images.

``concept-probe run`` with no arguments calls these; notebooks use them too. The demo images
have known ground-truth factors (shape, colour, texture), attached to every row so that the
report can say which concept tracks which factor value.
"""

from __future__ import annotations

from ._checks import check_positive_int

__all__ = ["demo_activations"]


def demo_activations(
    n_images: int = 600,
    *,
    seed: int = 0,
    layer: str | None = None,
    device: str = "cpu",
    batch_size: int = 100,
    progress: bool = True,
    min_fraction: float = 0.25,
):
    """Extract the shipped demo ResNet's activations on freshly generated shapes images.

    Parameters
    ----------
    n_images : int, default=600
        Images to generate (each gives ``h * w`` rows on the layer's grid).
    seed : int, default=0
        Seed of the image generator (the model's training data used other seeds).
    layer : str, optional
        Layer to hook; the one recorded in the checkpoint as recommended by default.
    device : str, default='cpu'
    batch_size : int, default=100
    progress : bool, default=True
        Show a progress bar.
    min_fraction : float, default=0.25
        A feature-map cell is labelled with an object's factors when the object covers at
        least this fraction of the cell's pixels (else background, ``-1``).

    Returns
    -------
    Activations
        Spatial activations with ``images`` (the generated images), and ``factors`` /
        ``factor_values`` (ground truth per row).
    """
    from . import zoo
    from .extraction import extract_image_activations

    n_images = check_positive_int(n_images, "n_images")
    meta = zoo.demo_metadata()
    cfg = meta["data_config"]
    size = int(cfg["input_size"][-1])
    layer = layer or meta["recommended_layer"]
    data = zoo.make_shapes(n_images, seed=seed, image_size=size)
    model = zoo.load_demo_model()
    mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    acts = extract_image_activations(
        model,
        layer,
        zoo.normalize_images(data.images, mean, std),
        mode="spatial",
        batch_size=batch_size,
        device=device,
        progress=progress,
        normalization=(mean, std),
        max_image_size=None,
    )
    acts = acts.replace(
        sample_ids=[f"shapes[{i}]" for i in range(n_images)],
        images=data.images,  # exactly the generated pixels the model saw
        meta=dict(acts.meta or {}, model="concept_probe demo ResNet", dataset="shapes", seed=seed),
    )
    # A cell is labelled with the object covering at least a quarter of it: at layer3 every
    # cell's receptive field spans whole objects, so a cell a triangle covers by a third
    # "sees" that triangle; a majority rule would call it background.
    cells = zoo.cell_factor_labels(data.factor_maps, acts.grid, min_fraction=min_fraction)
    return acts.with_factors(cells, zoo.FACTORS)
