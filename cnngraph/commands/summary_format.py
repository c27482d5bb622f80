"""Render a Summary as a text table, Markdown or JSON."""
from __future__ import annotations

import json

from ..summary import Summary, human_bytes, human_count

__all__ = ["format_summary", "training_totals"]

BAR = 12


def _rows(s: Summary) -> list[list[str]]:
    out = []
    for r in s.rows:
        share = r.flops / s.total_flops if s.total_flops else 0.0
        bar = "█" * round(share * BAR)
        rf = r.receptive_field
        rf = "global" if rf == "global" else ("x".join(map(str, rf)) if rf else "-")
        out.append([r.id, r.type, ", ".join(r.inputs) or "-", "x".join(map(str, r.out_shape)) or "scalar",
                    f"{r.params:,}", human_count(r.flops), f"{share * 100:4.1f}% {bar}", rf, human_bytes(r.act_bytes)])
    return out


def training_totals(s: Summary) -> list[str]:
    """The training-memory line: measured, skipped (why, and a static estimate instead) or none."""
    b = s.batch_size
    if s.training_memory_skipped is not None:
        return [f"peak activation memory (training, batch {b}): not measured: {s.training_memory_skipped}; "
                f"static estimate {human_bytes(s.training_estimate_bytes or 0)} (every layer's output kept for "
                f"backward); --no-training-memory leaves this out"]
    if s.training_peak_bytes is None:
        return []
    tm = s.training_memory or {}
    m = tm.get("measured", {})
    how = (f"measured {human_bytes(m['1'])} at batch 1, {human_bytes(m['2'])} at batch 2; "
           f"{human_bytes(tm.get('per_sample_bytes', 0))} per sample" if "1" in m and "2" in m else "measured")
    return [f"peak activation memory (training, batch {b}): {human_bytes(s.training_peak_bytes)} ({how}; live "
            f"tensors + tape, parameters, gradients and optimizer state excluded)"]


HEAD = ["layer", "type", "inputs", "output", "params", "FLOPs", "FLOPs share", "recept.", "act. memory"]


def format_summary(s: Summary, fmt: str = "table") -> str:
    """``fmt`` is "table", "markdown" or "json". FLOPs are multiply-adds per sample."""
    if fmt == "json":
        return json.dumps(s.to_dict(), indent=2)
    rows = _rows(s)
    totals = [f"total params {s.total_params:,} ({human_bytes(s.param_bytes)} with buffers, float32)",
              f"total FLOPs {human_count(s.total_flops)} multiply-adds per sample",
              f"peak activation memory (inference, batch {s.batch_size}): {human_bytes(s.inference_peak_bytes)}"]
    totals += training_totals(s)
    for k, v in s.extra.items():
        totals.append(f"{k}: {v}")
    if fmt == "markdown":
        lines = ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return f"**{s.name}** (batch {s.batch_size})\n\n" + "\n".join(lines) + "\n\n" + "\n".join(f"- {t}" for t in totals)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEAD)]
    fmt_row = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    lines = [f"{s.name} (batch {s.batch_size})", fmt_row(HEAD), fmt_row(["-" * w for w in widths])]
    lines += [fmt_row(r) for r in rows]
    lines.append(fmt_row(["-" * w for w in widths]))
    return "\n".join(lines + totals)
