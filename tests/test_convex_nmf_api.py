"""ConvexNMF as a user meets it: inputs, errors, stopping, save/load, devices."""

import json
import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from concept_probe import (
    ConvergenceWarning,
    ConvexNMF,
    CorruptFileError,
    NotFittedError,
    SemiNMF,
)


def data(n=120, d=10, seed=0, mixed=False):
    g = torch.Generator().manual_seed(seed)
    A = torch.rand(n, d, generator=g)
    return A - 0.3 if mixed else A


@pytest.fixture
def fitted():
    A = data(mixed=True)
    nmf = ConvexNMF(4, solver="mu", seed=0, tol=0)
    Z, D = nmf.fit(A, max_iter=30)
    return nmf, A, Z, D


def test_signature_and_defaults_match_the_seed_api():
    nmf = ConvexNMF(3)
    assert (
        nmf.nb_concepts,
        nmf.device,
        nmf.tol,
        nmf.strict_convex,
        nmf.solver,
        nmf.verbose,
        nmf.l1_penalty,
    ) == (3, "cpu", 1e-4, False, "pgd", False, 0.0)
    assert isinstance(nmf, torch.nn.Module)
    for name in (
        "fit",
        "encode",
        "decode",
        "get_dictionary",
        "init_random_z",
        "init_random_w",
        "init_semi_nmf",
        "sanitize_np_input",
        "sanitize_np_codes",
    ):
        assert callable(getattr(nmf, name))


def test_fit_exposes_what_was_learned_and_how(fitted):
    nmf, _A, Z, D = fitted
    assert Z.shape == (120, 4) and D.shape == (4, 10) and nmf.W.shape == (4, 120)
    assert nmf.n_iter_ == 30 and len(nmf.loss_history_) == 31
    assert nmf.converged_ is False
    assert 0 < nmf.reconstruction_error_ < 1
    assert nmf.mixed_sign_ is True
    assert nmf.n_rows_fit_ == 120 and nmf.n_features_in_ == 10
    assert nmf.n_samples_fit_ == 120  # scikit-learn's name for the same count
    torch.testing.assert_close(nmf.get_dictionary(), D)
    torch.testing.assert_close(nmf.decode(Z), Z @ D)


def test_same_seed_same_result_and_other_seed_differs():
    A = data()
    runs = [
        ConvexNMF(3, init=init, seed=s, tol=0).fit(A, max_iter=10)[0]
        for init, s in [("random", 1), ("random", 1), ("random", 2)]
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.allclose(runs[0], runs[2])


def test_tol_stops_early_and_max_iter_warns():
    A = data()
    nmf = ConvexNMF(3, solver="mu", tol=1e-3, seed=0)
    nmf.fit(A, max_iter=2000)
    assert nmf.converged_ and nmf.n_iter_ < 2000
    h = nmf.loss_history_
    assert (h[-2] - h[-1]) / h[-2] < 1e-3
    with pytest.warns(ConvergenceWarning, match="max_iter=3"):
        ConvexNMF(3, tol=1e-12, seed=0).fit(A, max_iter=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ConvexNMF(3, tol=0, seed=0).fit(A, max_iter=3)  # tol=0: no warning


@pytest.mark.parametrize(
    "make",
    [
        lambda A: A.numpy(),
        lambda A: A.double().numpy(),
        lambda A: DataLoader(TensorDataset(A), batch_size=32),
        lambda A: DataLoader(TensorDataset(A, torch.zeros(len(A))), batch_size=50),
        lambda A: [A[:50], A[50:].numpy()],
        lambda A: (b for b in torch.split(A, 40)),
    ],
    ids=["ndarray", "ndarray64", "dataloader", "dataloader_xy", "list", "generator"],
)
def test_accepts_arrays_dataloaders_and_iterables(make):
    A = data()
    ref = ConvexNMF(3, seed=0, tol=0, dtype=torch.float32).fit(A, max_iter=5)[0]
    got = ConvexNMF(3, seed=0, tol=0, dtype=torch.float32).fit(make(A), max_iter=5)[0]
    torch.testing.assert_close(got, ref)


def test_sanitizers_return_float32_numpy():
    nmf = ConvexNMF(3)
    A = data()
    out = nmf.sanitize_np_input(DataLoader(TensorDataset(A.double()), batch_size=7))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (120, 10)
    np.testing.assert_allclose(out, A.numpy())
    z = nmf.sanitize_np_codes(torch.rand(5, 3))
    assert z.dtype == np.float32 and z.shape == (5, 3)
    with pytest.raises(ValueError, match="nb_concepts=3 columns"):
        nmf.sanitize_np_codes(torch.rand(5, 4))
    with pytest.raises(ValueError, match="2 dimensions"):
        nmf.sanitize_np_input(np.zeros((2, 3, 4)))


def test_public_inits_are_seeded_and_shaped():
    A = data()
    nmf = ConvexNMF(3, seed=0, strict_convex=True)
    Z, W = nmf.init_random_z(A), nmf.init_random_w(A)
    assert Z.shape == (120, 3) and W.shape == (3, 120)
    assert (Z > 0).all() and (W > 0).all()
    torch.testing.assert_close(W.sum(dim=1), torch.ones(3))
    Zs, Ws = nmf.init_semi_nmf(A, max_snmf_iters=20)
    Zk, Wk = nmf.init_kmeans(A)
    for Zi, Wi in ((Zs, Ws), (Zk, Wk)):
        assert Zi.shape == (120, 3) and Wi.shape == (3, 120)
        assert (Zi >= 0.2).all() and (Wi > 0).all()
        torch.testing.assert_close(Wi.sum(dim=1), torch.ones(3))


# ----------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "A", "exc", "match"),
    [
        ({}, torch.full((5, 3), float("nan")), ValueError, r"15 NaN .*first at index \(0, 0\)"),
        ({}, torch.tensor([[1.0, float("inf")], [0, 1]]), ValueError, "1 infinite"),
        ({}, torch.rand(3, 4, 5), ValueError, r"2 dimensions.*\(3, 4, 5\).*einops"),
        ({}, torch.rand(6), ValueError, "reshape"),
        ({}, torch.rand(0, 4), ValueError, "empty"),
        ({}, [], ValueError, "empty iterable"),
        ({}, "not data", TypeError, "torch.Tensor, a numpy.ndarray"),
        ({"nb_concepts": 0}, torch.rand(5, 3), ValueError, "positive integer"),
        ({"nb_concepts": 2.5}, torch.rand(5, 3), ValueError, "positive integer"),
        ({"nb_concepts": 9}, torch.rand(5, 3), ValueError, r"nb_concepts=9 .* n_rows=5"),
        (
            {"solver": "adam"},
            torch.rand(5, 3),
            ValueError,
            r"solver must be one of 'mu', 'pgd'; got 'adam'. 'mu' is",
        ),
        ({"l1_penalty": -1.0}, torch.rand(5, 3), ValueError, "l1_penalty must be"),
        ({"init": "nndsvd"}, torch.rand(5, 3), ValueError, r"init must be one of .*; got 'nndsvd'"),
        ({"tol": -1}, torch.rand(5, 3), ValueError, "tol must be"),
        ({"dtype": torch.float16}, torch.rand(5, 3), ValueError, "dtype"),
        ({"batch_size": 0}, torch.rand(5, 3), ValueError, "batch_size"),
        ({"device": "tpu:9"}, torch.rand(5, 3), ValueError, "device"),
    ],
)
def test_bad_input_raises_a_helpful_error(kwargs, A, exc, match):
    kwargs = {"nb_concepts": 2, **kwargs}
    with pytest.raises(exc, match=match):
        ConvexNMF(**kwargs).fit(A, max_iter=2)


def test_unknown_keyword_argument_is_refused():
    with pytest.raises(TypeError) as err:
        ConvexNMF(3, max_iters=2)
    assert str(err.value) == (
        "ConvexNMF() got unexpected keyword argument(s) 'max_iters'. Accepted extra keyword "
        "arguments: batch_size, distributed, dtype, init, max_iter, momentum, process_group, "
        "seed, support_size."
    )
    with pytest.raises(TypeError) as err:
        SemiNMF(3, momentum=True)
    assert str(err.value) == (
        "SemiNMF() got unexpected keyword argument(s) 'momentum'. Accepted extra keyword "
        "arguments: batch_size, distributed, dtype, init, max_iter, process_group, seed."
    )


@pytest.mark.parametrize("cls", [ConvexNMF, SemiNMF])
def test_constructor_max_iter_is_fits_default(cls):
    # Compatibility extra for code ported from overcomplete: ConvexNMF(k, max_iter=N).
    A = data()
    est = cls(3, seed=0, tol=0, max_iter=7)
    est.fit(A)
    assert est.n_iter_ == 7 and len(est.loss_history_) == 8
    est.fit(A, max_iter=3)  # an explicit fit argument wins
    assert est.n_iter_ == 3
    default = cls(3, seed=0, tol=0)
    assert default.max_iter is None
    default.fit(data(n=20, d=4), max_iter=None)
    assert default.n_iter_ == 500  # fit's own default when neither names one
    with pytest.raises(ValueError, match=r"max_iter must be an integer >= 0; got -2\."):
        cls(3, max_iter=-2).fit(A)


def test_constructor_max_iter_survives_save_and_load(tmp_path):
    A = data()
    nmf = ConvexNMF(3, seed=0, tol=0, max_iter=4)
    nmf.fit(A)
    back = ConvexNMF.load(nmf.save(tmp_path / "c.safetensors"))
    assert back.max_iter == 4 and back.n_iter_ == 4


def test_load_finds_classes_through_the_registry(tmp_path):
    from concept_probe.factorization._base import DictionaryEstimator

    assert DictionaryEstimator._registry["ConvexNMF"] is ConvexNMF
    assert DictionaryEstimator._registry["SemiNMF"] is SemiNMF

    class TinySemiNMF(SemiNMF):
        """A subclass defined by a user joins the registry and loads as itself."""

    est = TinySemiNMF(2, seed=0, tol=0)
    est.fit(data(), max_iter=3)
    path = est.save(tmp_path / "tiny.safetensors")
    back = DictionaryEstimator.load(path)
    assert type(back) is TinySemiNMF and back.n_iter_ == 3
    del DictionaryEstimator._registry["TinySemiNMF"]
    with pytest.raises(CorruptFileError, match=r"unknown estimator class 'TinySemiNMF'"):
        SemiNMF.load(path)


def test_semi_nmf_start_is_the_same_function_for_both_estimators():
    # ConvexNMF(init='semi_nmf') starts from the solver layer's Semi-NMF: the same codes a
    # SemiNMF with the same seed and iterations learns.
    from concept_probe.factorization._init import convex_start_from_codes

    A = data()
    Zs, _ = SemiNMF(3, seed=0, tol=0).fit(A, max_iter=20)
    Z0, W0 = ConvexNMF(3, seed=0, tol=0).init_semi_nmf(A, max_snmf_iters=20)
    Zr, Wr = convex_start_from_codes(Zs)
    torch.testing.assert_close(Z0, Zr)
    torch.testing.assert_close(W0, Wr)


def test_bad_max_iter():
    with pytest.raises(ValueError, match="max_iter must be an integer >= 0"):
        ConvexNMF(2).fit(data(), max_iter=-1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_unavailable_cuda_device_is_named():
    with pytest.raises(ValueError, match=r"CUDA is not available.*device='cpu'"):
        ConvexNMF(2, device="cuda").fit(data(), max_iter=1)


@pytest.mark.parametrize("method", ["encode", "decode", "get_dictionary", "save"])
def test_use_before_fit_raises_not_fitted(method, tmp_path):
    nmf = ConvexNMF(3)
    args = {
        "encode": (data(),),
        "decode": (torch.rand(2, 3),),
        "get_dictionary": (),
        "save": (tmp_path / "x.safetensors",),
    }[method]
    with pytest.raises(NotFittedError, match=rf"ConvexNMF instance is not fitted.*{method}\(\)"):
        getattr(nmf, method)(*args)


def test_encode_and_decode_check_shapes(fitted):
    nmf, *_ = fitted
    with pytest.raises(ValueError, match="A has 7 features but this ConvexNMF was fitted on 10"):
        nmf.encode(torch.rand(3, 7))
    with pytest.raises(ValueError, match="nb_concepts=4 columns"):
        nmf.decode(torch.rand(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        nmf.encode(torch.full((2, 10), float("nan")))


# ----------------------------------------------------------------------- save / load
def test_state_dict_round_trip_encodes_identically(fitted):
    nmf, A, *_ = fitted
    fresh = ConvexNMF(4, solver="mu")
    assert not fresh.fitted
    fresh.load_state_dict(nmf.state_dict())
    assert fresh.fitted and fresh.W.shape == nmf.W.shape
    torch.testing.assert_close(fresh.encode(A), nmf.encode(A), rtol=0, atol=0)
    # torch.save / torch.load of the whole state works too (tensors only, no pickle needed).
    sd = {k: v.clone() for k, v in nmf.state_dict().items()}
    assert set(sd) == {"W", "D"}


def test_save_load_file_round_trip(fitted, tmp_path):
    nmf, A, *_ = fitted
    path = nmf.save(tmp_path / "sub" / "concepts.safetensors")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    loaded = ConvexNMF.load(path)
    assert type(loaded) is ConvexNMF
    assert (loaded.nb_concepts, loaded.solver, loaded.tol, loaded.seed) == (4, "mu", 0, 0)
    assert loaded.loss_history_ == nmf.loss_history_ and loaded.n_iter_ == 30
    torch.testing.assert_close(loaded.W, nmf.W, rtol=0, atol=0)
    torch.testing.assert_close(loaded.encode(A), nmf.encode(A), rtol=0, atol=0)
    small = ConvexNMF.load(nmf.save(tmp_path / "noW.safetensors", include_W=False))
    assert small.W.numel() == 0 and small.fitted
    torch.testing.assert_close(small.encode(A), nmf.encode(A))


def test_files_from_before_rows_and_inputs_were_named_apart_still_load(fitted, tmp_path):
    # older files recorded the fit's row count as "n_samples_fit"
    from safetensors import safe_open

    from concept_probe._io import save_tensors_atomic

    nmf, *_ = fitted
    path = nmf.save(tmp_path / "new.safetensors")
    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["concept_probe"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    assert header["fit"]["n_rows_fit"] == 120 and "n_samples_fit" not in header["fit"]
    header["fit"]["n_samples_fit"] = header["fit"].pop("n_rows_fit")
    old = tmp_path / "old.safetensors"
    save_tensors_atomic(tensors, old, metadata={"concept_probe": json.dumps(header)})
    loaded = ConvexNMF.load(old)
    assert loaded.n_rows_fit_ == 120 and loaded.n_samples_fit_ == 120


def test_file_header_is_readable_json(fitted, tmp_path):
    from safetensors import safe_open

    nmf, *_ = fitted
    path = nmf.save(tmp_path / "c.safetensors")
    with safe_open(str(path), "pt") as f:
        header = json.loads(f.metadata()["concept_probe"])
    assert header["class"] == "ConvexNMF" and header["config"]["nb_concepts"] == 4
    assert header["fit"]["n_iter"] == 30


def test_loading_bad_files_gives_clear_errors(fitted, tmp_path):
    nmf, *_ = fitted
    with pytest.raises(FileNotFoundError, match="No saved estimator"):
        ConvexNMF.load(tmp_path / "missing.safetensors")
    path = nmf.save(tmp_path / "c.safetensors")
    raw = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CorruptFileError, match="truncated"):
        ConvexNMF.load(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"hello world, not safetensors")
    with pytest.raises(CorruptFileError):
        ConvexNMF.load(tmp_path / "junk.safetensors")
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CorruptFileError, match="not a concept_probe estimator"):
        ConvexNMF.load(tmp_path / "other.safetensors")
    snmf = SemiNMF(2, seed=0, tol=0)
    snmf.fit(data(), max_iter=5)
    spath = snmf.save(tmp_path / "semi.safetensors")
    with pytest.raises(TypeError, match="holds a SemiNMF"):
        ConvexNMF.load(spath)
    assert isinstance(SemiNMF.load(spath), SemiNMF)


def test_failed_save_leaves_nothing_behind(fitted, tmp_path, monkeypatch):
    import safetensors.torch

    nmf, *_ = fitted

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        nmf.save(tmp_path / "c.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_verbose_shows_a_progress_bar(capsys):
    ConvexNMF(2, verbose=True, seed=0, tol=0).fit(data(), max_iter=5)
    err = capsys.readouterr().err
    assert "ConvexNMF[pgd]" in err and "loss=" in err


def test_repr_names_the_configuration(fitted):
    nmf, *_ = fitted
    assert "nb_concepts=4" in repr(nmf) and "solver='mu'" in repr(nmf)
    assert "dictionary=(4, 10)" in repr(nmf)


# ----------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("solver", ["mu", "pgd"])
def test_cuda_fit_matches_cpu(cuda_device, solver):
    A = data(n=500, d=32, mixed=True).double()
    cpu = ConvexNMF(5, solver=solver, init="random", seed=0, tol=0)
    _Zc, _Dc = cpu.fit(A, max_iter=50)
    gpu = ConvexNMF(5, solver=solver, init="random", seed=0, tol=0, device=cuda_device)
    Zg, _Dg = gpu.fit(A, max_iter=50)
    assert Zg.device.type == "cuda" and gpu.W.device.type == "cuda"
    # Random draws differ between CPU and CUDA generators: compare quality, not iterates.
    assert gpu.reconstruction_error_ == pytest.approx(cpu.reconstruction_error_, rel=0.2)
    Ze = gpu.encode(A.to(cuda_device))
    assert Ze.device.type == "cuda"
    moved = gpu.to("cpu")
    assert moved.D.device.type == "cpu" and moved.device == "cpu"
    torch.testing.assert_close(moved.encode(A), Ze.cpu(), rtol=1e-6, atol=1e-8)


@pytest.mark.gpu
@pytest.mark.parametrize(("solver", "mixed"), [("mu", False), ("mu", True), ("pgd", True)])
def test_cuda_iteration_loop_never_synchronises(cuda_device, solver, mixed):
    """With tol=0 and no progress bar, the loop reads nothing back to the host."""
    from concept_probe.factorization._init import random_w, random_z, rescale_to_data
    from concept_probe.factorization._kernels import GramFreeData
    from concept_probe.factorization._solvers import convex_nmf_solve

    A = data(n=4000, d=64, mixed=mixed).float().to(cuda_device)
    X = GramFreeData(A, 1000)
    g = torch.Generator(device=cuda_device).manual_seed(0)
    kw = {"generator": g, "dtype": A.dtype, "device": A.device}
    Z, Wt = random_z(X.n, 6, **kw), random_w(X.n, 6, **kw).T.contiguous()
    m = rescale_to_data(X, Z, Wt)
    checked = []

    def watch(it, *_):
        # Setup (power iterations, eigvalsh, the guard) may read back; the loop may not.
        # Iterations 2..19 run with synchronising calls turned into errors.
        mode = "error" if it < 19 else "default"
        with warnings.catch_warnings():  # the "prototype feature" notice
            warnings.simplefilter("ignore", UserWarning)
            torch.cuda.set_sync_debug_mode(mode)
        checked.append(it)
        return False

    try:
        res = convex_nmf_solve(
            X,
            Z,
            Wt,
            m,
            solver=solver,
            max_iter=20,
            tol=0.0,
            generator=g,
            warn=False,
            callback=watch,
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert checked == list(range(1, 21))
    assert res.n_iter == 20 and len(res.losses) == 21
    assert res.losses[-1] < res.losses[0]
