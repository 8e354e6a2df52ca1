"""A registered version is an MLflow Model: `models:/<name>@champion` loads with MLflow's own API,
predicts what `tuneloop evaluate` predicts with PyTorch before `convert` and with INT8 after it,
scores its (neutral) input example through `mlflow.models.predict`, and refuses tampered files at
load. `tuneloop.model.load` verifies every file, MLmodel and pyfunc_model.py included, before MLflow
reads any; swapped labels with a re-hashed checksums.json are refused by every reader of a version.

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

import tuneloop.model
from tuneloop.config import PROJECT_ROOT, load_settings
from tuneloop.evaluate.metrics import score
from tuneloop.registry.store import Registry, RegistryError
from tuneloop.serve.backends import IntegrityError
from tuneloop.serve.settings import ServeSettings
from tuneloop.steps import mlflow_model, pyfunc_model
from tuneloop.steps.convert import convert_step
from tuneloop.steps.evaluate import evaluate_step
from tuneloop.steps.ingest import ingest_step
from tuneloop.steps.mlflow_model import INPUT_EXAMPLE, pip_requirements, read_texts
from tuneloop.steps.round import predictor, train_step
from tuneloop.steps.serve import RegistrySource
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


def _swapped(data: bytes, a: str = "alpha", b: str = "gamma") -> bytes:
    """`data` with the label names `a` and `b` exchanged wherever they occur (as JSON strings)."""
    text = data.decode().replace(f'"{a}"', '"\0"').replace(f'"{b}"', f'"{a}"').replace('"\0"', f'"{b}"')
    assert text != data.decode(), "nothing was swapped"
    return text.encode()


def _swapped_labels_rehashed(settings, version: str) -> list[tuple[Path, bytes]]:
    """Edits that swap two labels in merged/config.json and adapter/labels.json and re-hash
    checksums.json to match: every file agrees with the manifest; only its tag does not."""
    sums_file = _artifact_file(settings, version, "model/checksums.json")
    sums = json.loads(sums_file.read_text())
    edits = []
    for relative in ("merged/config.json", "adapter/labels.json"):
        path = _artifact_file(settings, version, f"model/{relative}")
        data = _swapped(path.read_bytes())
        sums[relative] = hashlib.sha256(data).hexdigest()
        edits.append((path, data))
    return [*edits, (sums_file, json.dumps(sums, indent=2).encode())]


def _service(settings, tmp_path: Path) -> RegistrySource:
    serve = ServeSettings(backends="onnx-int8,onnx-fp32,torch", cache_dir=tmp_path / "serve")
    return RegistrySource(settings, serve, threads=1)


MANIFEST_REFUSED = r"checksums.json: sha256 .* but the version tag checksums_sha256 records"


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


def test_the_published_input_examples_hold_no_training_text(champion, tmp_path) -> None:
    settings, version, root = champion
    folder = Registry(settings).download(version, "", tmp_path / "v", verify=True)
    # No row of the data the version was trained and evaluated on, in any file it publishes.
    texts = set(pd.read_csv(root / "data.csv")["text"]) | set(pd.read_csv(root / "holdout.csv")["text"])
    for path in (p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        leaked = sorted(t for t in texts if t.encode() in data)
        assert not leaked, (path.relative_to(folder), leaked[:3])
    # The examples MLflow shows and serves are the fixed neutral text, in both files.
    example = json.loads((folder / "input_example.json").read_text())
    assert [row[-1] for row in example["data"]] == list(INPUT_EXAMPLE), example
    serving = json.loads((folder / "serving_input_example.json").read_text())
    assert serving["dataframe_split"]["data"] == example["data"]


def test_swapped_labels_with_a_rehashed_checksums_file_are_refused_by_every_reader(
    champion, tmp_path
) -> None:
    settings, version, root = champion
    keyword_sentences(LABELS, 12, seed=5).to_csv(root / "more.csv", index=False)
    ingest_step(settings, [root / "more.csv"])  # so a next round has something to train on
    registry = Registry(settings)
    before = {mv.version for mv in registry.versions()}
    with _tampered(*_swapped_labels_rehashed(settings, version)):
        with pytest.raises(IntegrityError, match=MANIFEST_REFUSED):
            mlflow.pyfunc.load_model(_uri(settings))  # the pyfunc's own check, in load_context
        with pytest.raises(IntegrityError, match=MANIFEST_REFUSED):
            tuneloop.model.load(_uri(settings))
        with pytest.raises(IntegrityError, match=MANIFEST_REFUSED):
            _service(settings, tmp_path).load(version)
        with pytest.raises(RegistryError, match=MANIFEST_REFUSED):
            convert_step(settings, version, tensorrt="off")
        with pytest.raises(RegistryError, match=MANIFEST_REFUSED):
            train_step(settings, progress=False)  # the next round's download of its parent
    assert {mv.version for mv in registry.versions()} == before  # nothing was registered
    assert "conversion" not in registry.get_version(version).tags  # nor converted


def test_the_verified_loader_loads_the_version_the_uri_names(champion, tmp_path) -> None:
    settings, version, _ = champion
    texts = ["apple banana cherry", "river ocean valley", "engine wheel brake"]
    plain = mlflow.pyfunc.load_model(_uri(settings)).predict(texts)
    model = tuneloop.model.load(_uri(settings))
    assert model.unwrap_python_model().loaded.version == version
    assert model.predict(texts).equals(plain)  # served after its temporary copy is gone
    kept = tuneloop.model.download(f"models:/{settings.model_name}/{version}", tmp_path / "kept")
    assert (kept / "MLmodel").is_file() and (kept / "registered_model_meta").is_file()
    assert mlflow.pyfunc.load_model(str(kept)).predict(texts).equals(plain)  # `mlflow models serve -m`
    with pytest.raises(ValueError, match="not an empty folder"):
        tuneloop.model.download(_uri(settings), tmp_path / "kept")
    info = Registry(settings).get_version(version)
    for uri in (f"runs:/{info.run_id}/model", str(kept), f"models:/{settings.model_name}/latest"):
        with pytest.raises(ValueError, match="give models:/<name>@<alias> or models:/<name>/<version>"):
            tuneloop.model.load(uri)


def test_the_verified_loader_refuses_a_changed_code_file_or_mlmodel_before_mlflow_reads_it(
    champion, tmp_path
) -> None:
    settings, version, _ = champion
    code = _artifact_file(settings, version, "model/pyfunc_model.py")
    mlmodel = _artifact_file(settings, version, "model/MLmodel")
    sums_file = _artifact_file(settings, version, "model/checksums.json")
    marker = tmp_path / "payload-ran"
    payload = code.read_bytes() + f"\nimport pathlib\npathlib.Path({str(marker)!r}).touch()\n".encode()
    sums = {**json.loads(sums_file.read_text()), "pyfunc_model.py": hashlib.sha256(payload).hexdigest()}
    rehashed = json.dumps(sums).encode()
    cases = [
        ([(code, payload)], r"pyfunc_model.py: sha256 .* but checksums.json records"),
        ([(code, payload), (sums_file, rehashed)], MANIFEST_REFUSED),
        ([(mlmodel, b"flavors: [not: {valid yaml")], r"MLmodel: sha256 .* but checksums.json records"),
    ]
    for edits, refusal in cases:
        with _tampered(*edits), pytest.raises(IntegrityError, match=refusal):
            tuneloop.model.load(_uri(settings), dst=tmp_path / "dl")
        assert not marker.exists() and not (tmp_path / "dl").exists()
    # What plain `mlflow.pyfunc.load_model` does not check (README): it runs the code file first;
    # the check in load_context refuses the version only after that.
    with _tampered((code, payload)), pytest.raises(IntegrityError, match="pyfunc_model.py: sha256"):
        mlflow.pyfunc.load_model(_uri(settings))
    assert marker.exists()


def test_the_readme_and_docstrings_name_every_backend_the_model_may_load() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme.split("### Load and score a version with MLflow", 1)[1].split("\n### ", 1)[0]
    for backend in mlflow_model.BACKENDS:
        assert f'"{backend}"' in section, backend
        assert f'"{backend}"' in (pyfunc_model.TuneloopClassifier.backend.__doc__ or ""), backend
    # Each backend's file and tag, in the README and the module that loads them.
    for text in (section, mlflow_model.__doc__ or ""):
        for needle in ("int8_sha256", "onnx_opt_sha256", "int8_serve", "PyTorch", "checksums_sha256"):
            assert needle in text, needle


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


def test_after_convert_swapped_labels_are_refused_by_the_onnx_service_and_the_model(converted, tmp_path):
    settings, version, _ = converted
    source = _service(settings, tmp_path)
    assert source.load(version).backend.startswith("onnx-")  # the ONNX path reads merged/ files alone
    with _tampered(*_swapped_labels_rehashed(settings, version)):
        with pytest.raises(IntegrityError, match=MANIFEST_REFUSED):
            source.load(version)
        with pytest.raises(IntegrityError, match=MANIFEST_REFUSED):
            tuneloop.model.load(_uri(settings))


def test_read_texts_takes_a_column_a_list_or_a_dict() -> None:
    texts = ["a b", "c"]
    assert read_texts(pd.DataFrame({"text": texts, "other": [1, 2]})) == texts
    assert read_texts(pd.DataFrame({0: texts})) == texts
    assert read_texts({"text": texts}) == texts and read_texts("a b") == ["a b"]
    assert read_texts(pd.DataFrame({"text": [texts]})) == texts  # MLflow's shape for a dict of lists
    with pytest.raises(TypeError, match="not strings"):
        read_texts([1, "a"])
