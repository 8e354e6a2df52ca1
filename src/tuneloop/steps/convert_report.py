"""What a conversion shows on the model version page of the MLflow UI: parity, the INT8 candidates,
and which model serves (teacher or student) with its speed against the teacher."""

from __future__ import annotations

from typing import Any


def parity_markdown(summary: dict[str, Any]) -> str:
    """The parity table shown on the model version page of the MLflow UI."""
    engine = summary["tensorrt"]
    trt_line = engine.get("status") or engine.get("skipped") or "built"
    lines = [
        f"**Conversion {'passed' if summary['parity']['passed'] else 'FAILED'}** "
        f"({summary['quantization']} INT8; TensorRT: {trt_line})",
        "",
        "| set | rows | fp32 max abs dlogit | torch macro-F1 | INT8 macro-F1 | drop (pts) | agreement |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in summary["parity"]["sets"].items():
        lines.append(
            f"| {name} | {s['n']} | {s['fp32_max_abs_logit_diff']:.2e} | {s['torch_macro_f1']:.4f} | "
            f"{_fmt(s['int8_macro_f1'])} | {_fmt(s['int8_macro_f1_drop_points'], 2)} | "
            f"{_fmt(s['int8_argmax_agreement'])} |"
        )
    lines += [""] + [f"- {reason}" for reason in summary["parity"]["reasons"]]
    lines = _served_lines(summary) + lines + _candidate_lines(summary)
    if engine.get("parity"):
        lines += [
            "",
            "| TensorRT engine vs fp32 | rows | macro-F1 | drop (pts) | agreement | max abs dlogit |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for name, e in engine["parity"].items():
            lines.append(
                f"| {name} | {e['n']} | {_fmt(e['macro_f1'])} | {_fmt(e['macro_f1_drop_points'], 2)} | "
                f"{_fmt(e['argmax_agreement'])} | {_fmt(e['max_abs_logit_diff'], 3)} |"
            )
    return "\n".join(lines)


def _candidate_lines(summary: dict[str, Any]) -> list[str]:
    """Each INT8 candidate's parity and serving-shape latency, and which one publishes and serves."""
    candidates = summary.get("int8_candidates") or []
    if not candidates:
        return []
    choice = summary.get("int8_choice") or {}
    lines = [
        "",
        "| INT8 candidate | parity | agreement (min) | p50 ms (best threads) | MB | chosen |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for c in candidates:
        agreement = [a for a in (c.get("agreement") or {}).values() if a is not None]
        timings = c.get("p50_ms") or {}
        best = min(timings.items(), key=lambda kv: kv[1]) if timings else None
        lines.append(
            f"| {c['name']} | {'passed' if c.get('parity_passed') else 'FAILED'} | "
            f"{_fmt(min(agreement) if agreement else None)} | "
            f"{f'{best[1]:.2f} ({best[0]})' if best else '-'} | {c.get('bytes', 0) / 1e6:.1f} | "
            f"{'yes' if c['name'] == choice.get('chosen') else ''} |"
        )
    if choice:
        ratio = choice.get("ratio_to_fp32")
        lines += [
            "",
            f"Serves **{choice.get('serve', '?')}**"
            + (f" ({choice['chosen']}, {ratio:.2f}x fp32 latency)" if choice.get("chosen") and ratio else ""),
        ]
        lines += [f"- {reason}" for reason in choice.get("reasons", [])]
    return lines


def _served_lines(summary: dict[str, Any]) -> list[str]:
    """Which model serves, teacher or student, and each one's speed beside the teacher's fp32."""
    served = summary.get("served")
    if not served:
        return []
    choice = served["choice"]
    fp32 = served["teacher_fp32_p50_ms"]
    lines = [
        f"**Serves {served['serves']}** ({choice['form']}); the figures below are its conversion's.",
        "",
        "| model | form | parity | p50 ms short (best threads) | x teacher fp32 | chosen |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for model in served["models"]:
        best = min(
            ((k, v) for k, v in model["p50_ms"].items() if k.startswith("short_t")),
            key=lambda kv: kv[1],
            default=None,
        )
        ratio = best[1] / fp32[best[0]] if best and fp32.get(best[0]) else None
        lines.append(
            f"| {model['name']} | {model['form']} | {'passed' if model['parity_passed'] else 'FAILED'} | "
            f"{f'{best[1]:.2f} ({best[0]})' if best else '-'} | {_fmt(ratio, 2)} | "
            f"{'yes' if model['name'] == choice['chosen'] else ''} |"
        )
    return [*lines, "", *[f"- {reason}" for reason in choice["reasons"]], ""]


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
