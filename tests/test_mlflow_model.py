"""A registered version is an MLflow Model: `models:/<name>@champion` loads with MLflow's own API,
predicts what `tuneloop evaluate` predicts with PyTorch before `convert` and with INT8 after it,
scores its input example through `mlflow.models.predict`, and refuses tampered files at load.

One tiny round is trained, registered and made champion for the module; the tests before the
`converted` fixture see the version unconverted, so they must stay above it in this file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import pandas as pd
import pytest
import yaml

from tuneloop.config import PROJECT_ROOT, load_settings
from tuneloop.evaluate.metrics import score
from tuneloop.registry.store import Registry
from tuneloop.serve.backends import IntegrityError
from tuneloop.steps.evaluate import evaluate_step
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.mlflow_model import pip_requirements, read_texts
from tuneloop.steps.round import predictor, train_step
from tuneloop.testing import TINY_TRAIN_SETTINGS, keyword_sentences

LABELS = ["alpha", "beta", "gamma"]
# Any conversion passes these (fp32 within 1 logit, any INT8 drop), so the INT8 path is exercised.
LENIENT = {
    "max_abs_logit_diff_fp32": 1.0,
    "int8_max_macro_f1_drop_points": 100,
    "int8_min_argmax_agreement": 0,
}


@pytest.fixture(scope="module")
def champion(tmp_path_factory):
    from tuneloop.testing import make_tiny_bert

    root = tmp_path_factory.mktemp("mlflow-model")
    keyword_sentences(LABELS, 40, seed=0).to_csv(root / "data.csv", index=False)
    keyword_sentences(LABELS, 12, seed=9).to_csv(root / "holdout.csv", index=False)
    policy = yaml.safe_load((PROJECT_ROOT / "registry" / "policy.yaml").read_text())
    policy["conversion"] = LENIENT
    (root / "policy.yaml").write_text(yaml.safe_dump(policy))
    settings = load_settings(
        home=root / "home",
        base_model=str(make_tiny_bert(root / "tiny", hidden_size=128)),
        epochs=6,
        **TINY_TRAIN_SETTINGS,
        policy_path=root / "policy.yaml",
    )
    ingest_step(settings, [root / "data.csv"])
    version = train_step(settings, progress=False)["version"]
    Registry(settings).set_alias("champion", version)  # stands in for approve + promote
    return settings, version, root


# What a converted version loads, by its `int8_serve` tag: INT8 only where it beat fp32 on this host.
SERVED_BACKEND = {"int8": "onnx-int8", "fp32": "onnx-fp32"}
SERVED_FILE = {"int8": "model.int8.onnx", "fp32": "model.opt.onnx"}


def _uri(settings) -> str:
    return f"models:/{settings.model_name}@champion"


def _evaluate_labels(settings, version: str, root: Path) -> tuple[list[str], list[str], dict]:
    """(texts, labels as `tuneloop evaluate` predicts them, evaluate_step's result) on the holdout."""
    frame = pd.read_csv(root / "holdout.csv")
    texts = frame["text"].tolist()
    adapter = Registry(settings).download(version, "adapter", root / f"adapter-{version}")
    return (
        texts,
        predictor(adapter, settings.max_length)(texts),
        evaluate_step(settings, version, root / "holdout.csv"),
    )


def _same_as_evaluate(model, settings, version: str, root: Path) -> None:
    texts, expected, report = _evaluate_labels(settings, version, root)
    got = model.predict(pd.DataFrame({"text": texts}))
    assert got["label"].tolist() == expected
    truth = pd.read_csv(root / "holdout.csv")["label"].tolist()
    scores = score(truth, got["label"].tolist(), report["labels"])
    assert scores.confusion == report["confusion"] and scores.accuracy == report["accuracy"]


def _artifact_file(settings, version: str, path: str) -> Path:
    """The file behind `path` in the version's run, in the local artifact store."""
    info = Registry(settings).get_version(version)
    root = mlflow.get_run(info.run_id).info.artifact_uri
    return Path(urlparse(root).path) / path


@contextlib.contextmanager
def _tampered(*edits: tuple[Path, bytes]) -> Iterator[None]:
    """Overwrite files in the artifact store for the block, then restore them byte for byte."""
    saved = [(path, path.read_bytes()) for path, _ in edits]
    try:
        for path, data in edits:
            path.write_bytes(data)
        yield
    finally:
        for path, data in saved:
            path.write_bytes(data)


def test_the_version_folder_is_an_mlflow_model_with_no_pickle(champion, tmp_path) -> None:
    settings, version, _ = champion
    folder = Registry(settings).download(version, "", tmp_path / "v", verify=True)  # checksums cover it
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert pyfunc["model_code_path"].endswith("pyfunc_model.py") and "python_model" not in pyfunc
    assert mlmodel["signature"]["inputs"] and "top_k" in mlmodel["signature"]["outputs"]
    assert (folder / "input_example.json").is_file()
    pickles = [p for p in folder.rglob("*") if p.suffix in (".pkl", ".pickle") or "cloudpickle" in p.name]
    assert pickles == []  # (MLmodel names cloudpickle's version, as every pyfunc does; nothing uses it)
    sums = json.loads((folder / "checksums.json").read_text())
    assert {"MLmodel", "pyfunc_model.py", "requirements.txt", "input_example.json"} <= set(sums)
    requirements = (folder / "requirements.txt").read_text().split()
    assert requirements == pip_requirements()
    lock = (PROJECT_ROOT / "requirements.lock").read_text().splitlines()
    assert all(line in lock for line in requirements), requirements
    assert {r.split("==")[0] for r in requirements} >= {"mlflow", "torch", "transformers", "onnxruntime"}


def test_before_convert_the_champion_loads_pytorch_and_predicts_what_evaluate_does(champion) -> None:
    settings, version, root = champion
    model = mlflow.pyfunc.load_model(_uri(settings))
    assert model.unwrap_python_model().backend == "torch"
    _same_as_evaluate(model, settings, version, root)
    texts = ["apple banana cherry", "river ocean valley"]
    by_frame = model.predict(pd.DataFrame({"text": texts}))
    assert model.predict(texts)["label"].tolist() == by_frame["label"].tolist()
    assert model.predict({"text": texts})["label"].tolist() == by_frame["label"].tolist()
    first = by_frame.iloc[0]
    assert len(first["top_k"]) == 3 and first["top_k"][0] == {
        "label": first["label"],
        "score": first["score"],
    }
    assert len(model.predict(texts, params={"top_k": 2}).iloc[0]["top_k"]) == 2


def test_mlflow_models_predict_scores_the_input_example_in_this_environment(champion, tmp_path) -> None:
    settings, _, _ = champion
    local = Path(mlflow.artifacts.download_artifacts(_uri(settings), dst_path=str(tmp_path / "m")))
    example = mlflow.models.Model.load(str(local)).load_input_example(str(local))
    out = tmp_path / "predictions.json"
    mlflow.models.predict(_uri(settings), input_data=example, env_manager="local", output_path=str(out))
    predictions = json.loads(out.read_text())["predictions"]
    assert len(predictions) == len(example) and {p["label"] for p in predictions} <= set(LABELS)


def test_a_tampered_file_is_refused_at_load(champion) -> None:
    settings, version, _ = champion
    config = _artifact_file(settings, version, "model/merged/config.json")
    relabelled = config.read_bytes().replace(b'"alpha"', b'"gamma"')
    refused = pytest.raises(IntegrityError, match=r"merged/config.json: sha256 .* but checksums.json records")
    with _tampered((config, relabelled)), refused:
        mlflow.pyfunc.load_model(_uri(settings))


def test_tampered_weights_with_a_matching_checksums_file_are_refused_by_the_tag(champion) -> None:
    settings, version, _ = champion
    weights = _artifact_file(settings, version, "model/merged/model.safetensors")
    sums_file = _artifact_file(settings, version, "model/checksums.json")
    bad = weights.read_bytes()[:-1] + b"\0"
    sums = {**json.loads(sums_file.read_text()), "merged/model.safetensors": hashlib.sha256(bad).hexdigest()}
    refused = pytest.raises(IntegrityError, match=r"the version tag merged_sha256 records")
    with _tampered((weights, bad), (sums_file, json.dumps(sums).encode())), refused:
        mlflow.pyfunc.load_model(_uri(settings))


# --- after `tuneloop convert` (keep below the tests of the unconverted version) ------------------


@pytest.fixture(scope="module")
def converted(champion):
    from tuneloop.steps.convert import convert_step

    settings, version, root = champion
    result = convert_step(settings, version, tensorrt="off")
    assert result["parity"]["passed"], result["parity"]["reasons"]
    return settings, version, root


def test_after_convert_the_champion_loads_int8_and_predicts_what_evaluate_does(converted) -> None:
    settings, version, root = converted
    source = Registry(settings).get_version(version).source
    before = {a.path for a in mlflow.artifacts.list_artifacts(artifact_uri=source)}
    model = mlflow.pyfunc.load_model(_uri(settings))
    # INT8 where the conversion found it faster than fp32 on this host, else the checked fp32 ONNX.
    serves = Registry(settings).get_version(version).tags["int8_serve"]
    assert model.unwrap_python_model().backend == SERVED_BACKEND[serves]
    _same_as_evaluate(model, settings, version, root)
    # The version's folder is what registration wrote: the conversion lives beside it.
    assert {a.path for a in mlflow.artifacts.list_artifacts(artifact_uri=source)} == before


def test_each_version_of_one_folder_loads_by_its_own_tags(converted) -> None:
    settings, version, _ = converted
    registry = Registry(settings)
    info = registry.get_version(version)
    # The same folder registered again, with a failed conversion: `models:/` names which version loads.
    other = registry.client.create_model_version(
        settings.model_name, info.source, info.run_id, tags={**info.tags, "conversion": "failed"}
    ).version
    failed = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{other}").unwrap_python_model()
    assert failed.backend == "torch" and failed.loaded.version == str(other)
    assert "conversion is failed" in " ".join(failed.loaded.notes)
    assert (
        mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{version}").unwrap_python_model().backend
        == SERVED_BACKEND[info.tags["int8_serve"]]
    )


def test_a_tampered_onnx_graph_is_refused_at_load(converted) -> None:
    settings, version, _ = converted
    tags = Registry(settings).get_version(version).tags
    name = SERVED_FILE[tags["int8_serve"]]  # the graph the loader would run
    graph = _artifact_file(settings, version, f"{tags['conversion_path']}/{name}")
    refused = pytest.raises(IntegrityError, match=rf"{name}: sha256 .* but the version records")
    with _tampered((graph, graph.read_bytes() + b"\0")), refused:
        mlflow.pyfunc.load_model(_uri(settings))


def test_read_texts_takes_a_column_a_list_or_a_dict() -> None:
    texts = ["a b", "c"]
    assert read_texts(pd.DataFrame({"text": texts, "other": [1, 2]})) == texts
    assert read_texts(pd.DataFrame({0: texts})) == texts
    assert read_texts({"text": texts}) == texts and read_texts("a b") == ["a b"]
    assert read_texts(pd.DataFrame({"text": [texts]})) == texts  # MLflow's shape for a dict of lists
    with pytest.raises(TypeError, match="not strings"):
        read_texts([1, "a"])
