"""The spec's estimator: only scikit-learn classifiers from allowlisted modules are ever built.

The old check accepted any dotted path under ``sklearn.``, so a spec could construct, from its
own params, a ``joblib.Memory`` (re-exported as ``sklearn.utils.validation.joblib.Memory``) or a
``multiprocessing`` socket ``Listener`` (imported by ``sklearn.callback._transport``).
"""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from ml_platform.catalog import MODELS_DIR
from ml_platform.spec import SpecError, load_spec, parse_spec
from ml_platform_tests.conftest import free_port


def _spec_with(estimator: str, params: dict) -> dict:
    raw = yaml.safe_load((MODELS_DIR / "iris" / "spec.yaml").read_text())
    raw["model"].update(estimator=estimator, params=params)
    return raw


@pytest.mark.parametrize(
    "estimator",
    [
        "sklearn.callback._transport.Listener",
        "sklearn.utils.validation.joblib.Memory",
        "sklearn.ensemble.__builtins__",
        "sklearn.ensemble._forest.RandomForestClassifier",  # private module paths are not accepted either
        "sklearn.pipeline.Pipeline",
        "os.system",
    ],
)
def test_attack_specs_are_rejected_when_the_spec_is_parsed(estimator: str, tmp_path: Path) -> None:
    port = free_port()
    params = {"address": ["127.0.0.1", port], "location": str(tmp_path / "cache")}
    with pytest.raises(SpecError, match="public scikit-learn classifier"):
        parse_spec(_spec_with(estimator, params))
    with socket.socket() as probe:  # nothing listens: no Listener was built
        assert probe.connect_ex(("127.0.0.1", port)) != 0
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("estimator", "message"),
    [
        ("sklearn.linear_model.LinearRegression", "not a scikit-learn classifier"),  # a regressor
        ("sklearn.neighbors.KDTree", "not a scikit-learn classifier"),  # not an estimator at all
        ("sklearn.ensemble.RandomTreesEmbedding", "not a scikit-learn classifier"),  # a transformer
        ("sklearn.neighbors.NearestNeighbors", "not a scikit-learn classifier"),
        ("sklearn.ensemble.NoSuchClassifier", "cannot import"),
    ],
)
def test_non_classifiers_of_allowed_modules_are_a_spec_error_before_construction(estimator: str, message: str) -> None:
    from ml_platform.ml.training import build_estimator

    spec = load_spec("iris")
    spec = replace(spec, model=replace(spec.model, estimator=estimator, params={"leaf_size": "not built"}))
    with pytest.raises(SpecError, match=message):
        build_estimator(spec)


@pytest.mark.parametrize(
    "estimator",
    [
        "sklearn.ensemble.RandomForestClassifier",
        "sklearn.ensemble.HistGradientBoostingClassifier",
        "sklearn.linear_model.LogisticRegression",
        "sklearn.tree.DecisionTreeClassifier",
        "sklearn.dummy.DummyClassifier",
    ],
)
def test_classifiers_pass_and_their_models_load_through_the_fixed_allowlist(estimator: str, tmp_path: Path) -> None:
    import pandas as pd
    import skops.io

    from ml_platform.ml.registry import skops_trusted_types
    from ml_platform.ml.safe_load import load_skops_model
    from ml_platform.ml.training import fit_model, split_dataset

    spec = load_spec("iris")
    spec = replace(spec, model=replace(spec.model, estimator=estimator, params={}))
    parse_spec(_spec_with(estimator, {}))
    split = split_dataset(pd.read_csv(spec.bootstrap_path()), spec)
    model = fit_model(split, spec)
    skops_trusted_types(model)  # raises when the model needs a type outside the fixed allowlist
    skops.io.dump(model, tmp_path / "model.skops")
    loaded = load_skops_model(tmp_path / "model.skops")
    assert (loaded.predict(split.x_test) == model.predict(split.x_test)).all()


def test_a_malformed_tree_is_refused_after_loading(tmp_path: Path) -> None:
    """skops warns a crafted Tree can make predict read out of bounds: child indices are checked."""
    import pandas as pd
    import skops.io

    from ml_platform.ml.safe_load import ModelRefused, load_skops_model
    from ml_platform.ml.training import fit_model, split_dataset

    spec = load_spec("iris")
    model = fit_model(split_dataset(pd.read_csv(spec.bootstrap_path()), spec), spec)
    good = tmp_path / "good.skops"
    skops.io.dump(model, good)
    assert load_skops_model(good).predict(pd.DataFrame([[5.1, 3.5, 1.4, 0.2]], columns=spec.feature_names))[0] == 0
    tree = model.estimators_[0].tree_
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    inner = next(i for i in range(len(nodes)) if nodes["left_child"][i] != -1)
    nodes["left_child"][inner] = 10**6
    state["nodes"] = nodes
    tree.__setstate__(state)
    bad = tmp_path / "bad.skops"
    skops.io.dump(model, bad)
    with pytest.raises(ModelRefused, match="tree child index out of range"):
        load_skops_model(bad, "9")
