"""Every public function follows the scverse / STYLE.md conventions."""

from __future__ import annotations

import inspect

import pytest

import sptl

P = inspect.Parameter


def _public(module):
    return [(f"{module.__name__}.{n}", getattr(module, n)) for n in module.__all__]


ADATA_FUNCS = [f for m in (sptl.pp, sptl.tl, sptl.pl) for f in _public(m) if inspect.isfunction(f[1])]
ALL_FUNCS = ADATA_FUNCS + [f for m in (sptl.datasets, sptl.metrics) for f in _public(m) if inspect.isfunction(f[1])]
MODELS = [c for c in _public(sptl.models) if inspect.isclass(c[1])]


def test_there_is_something_to_check():
    names = [n for n, _ in ADATA_FUNCS]
    assert "sptl.tl.transfer_labels" in names and "sptl.pl.transfer" in names
    assert "sptl.models.KNNTransfer" in [n for n, _ in MODELS]


@pytest.mark.parametrize(("name", "func"), ADATA_FUNCS, ids=[n for n, _ in ADATA_FUNCS])
def test_adata_first_positional_only_rest_keyword_only(name, func):
    params = list(inspect.signature(func).parameters.values())
    positional = [p for p in params if p.kind in (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)]
    assert 1 <= len(positional) <= 3, f"{name}: {len(positional)} positional parameters"
    assert all(p.kind is P.POSITIONAL_ONLY for p in positional), (
        f"{name}: positional params must be positional-only (/)"
    )
    assert positional[0].name in ("adata", "source", "slices", "image", "candidates"), name
    rest = params[len(positional) :]
    assert all(p.kind is P.KEYWORD_ONLY for p in rest), f"{name}: parameters after / must be keyword-only (*)"


@pytest.mark.parametrize(("name", "func"), ALL_FUNCS, ids=[n for n, _ in ALL_FUNCS])
def test_type_hints_and_numpy_docstring(name, func):
    sig = inspect.signature(func)
    missing = [p.name for p in sig.parameters.values() if p.annotation is P.empty]
    assert not missing, f"{name}: parameters without type hints: {missing}"
    assert sig.return_annotation is not inspect.Signature.empty, f"{name}: no return type hint"
    doc = inspect.getdoc(func) or ""
    for section in ("Parameters\n----------", "Returns\n-------", "Examples\n--------"):
        assert section in doc, f"{name}: docstring lacks a {section.splitlines()[0]} section"
    assert "{" + "adata}" not in doc, f"{name}: unfilled docstring fragment"
    params_text = doc.split("Parameters\n----------", 1)[1].split("Returns\n-------", 1)[0]
    undocumented = [p for p in sig.parameters if not any(line.startswith(p) for line in params_text.splitlines())]
    assert not undocumented, f"{name}: parameters missing from the docstring: {undocumented}"


@pytest.mark.parametrize(
    ("name", "func"), [f for f in ADATA_FUNCS if ".tl." in f[0] or ".pp." in f[0]], ids=lambda x: str(x)
)
def test_writers_have_copy_and_key_added(name, func):
    params = inspect.signature(func).parameters
    if next(iter(params)) == "image":  # builds a new AnnData from an image: nothing to copy or return None for
        assert "key_added" in params and "copy" not in params, f"{name}: image readers take key_added=, not copy="
        assert "AnnData" in str(inspect.signature(func).return_annotation), f"{name}: must return an AnnData"
        return
    assert "copy" in params and params["copy"].default is False, f"{name}: needs copy=False"
    assert "key_added" in params, f"{name}: needs key_added="
    assert "None" in str(inspect.signature(func).return_annotation), f"{name}: must return AnnData | None"


@pytest.mark.parametrize(("name", "func"), [f for f in ADATA_FUNCS if ".pl." in f[0]], ids=lambda x: str(x))
def test_plots_have_show_save_ax(name, func):
    params = inspect.signature(func).parameters
    assert {"show", "save", "ax"} <= set(params), f"{name}: plots take show=, save=, ax="


@pytest.mark.parametrize(
    ("name", "func"), [f for f in _public(sptl.datasets) if inspect.isfunction(f[1])], ids=lambda x: str(x)
)
def test_loaders_accept_a_local_path(name, func):
    assert "path" in inspect.signature(func).parameters, f"{name}: loaders accept path= to the raw files"


@pytest.mark.parametrize(("name", "cls"), MODELS, ids=[n for n, _ in MODELS])
def test_models_fit_predict_save_load(name, cls):
    for method in ("fit", "predict", "save", "load"):
        assert callable(getattr(cls, method, None)), f"{name} lacks {method}"
    assert isinstance(inspect.getattr_static(cls, "load"), classmethod), f"{name}.load must be a classmethod"


def test_package_exposes_only_submodules():
    public = {n for n in dir(sptl) if not n.startswith("_")}
    assert public <= {"datasets", "metrics", "models", "pl", "pp", "tl"}
    assert sptl.__version__
