"""What decoding plus the model allow: the limit each served precision's POST /service rate is judged against.

The limit is the machine's cores spent on nothing but decoding the bench's JPEGs and running the model:
cores ÷ (the model's core time an image at batch 8 + the mean decode time of a photo). A served precision's
share is its /service c16 rate over that limit; what the server spends beyond both is the stack's own cost.
Beside it, the model's core time at the batch size the server formed at c16 (interpolated between the ceiling's
batch sizes): how much of the model threads' excess over batch 8 is the smaller batches', and how much is not."""
from __future__ import annotations

import re
import statistics

from bench.server import JPEGS


def decode_ms(report: dict) -> float:
    """The mean of the bench's JPEGs' median decode + resize + scale times (Pillow's draft path, as served)."""
    return statistics.fmean(report["decode"][photo.name]["pillow_ms"] for photo in JPEGS)


def core_ms_at(ceiling: dict, cores: int, batch: float) -> float:
    """The model's core time an image at a batch of `batch` images (fractional: a mean), interpolated linearly
    between the ceiling's measured batch sizes (b1, b2, …), held at the ends."""
    points = sorted((int(key[1:]), cores * 1000 / rate) for key, rate in ceiling.items() if re.fullmatch(r"b\d+", key))
    for (low, low_ms), (high, high_ms) in zip(points, points[1:]):
        if batch <= high:
            return low_ms + (high_ms - low_ms) * (max(batch, low) - low) / (high - low)
    return points[-1][1]


def served(report: dict) -> dict[str, tuple[str, dict]]:
    """Each precision served under load: its label → (its row in the ceiling, its /service runs)."""
    engines = report["ceiling"]["engines"]
    default = next(name for name, e in engines.items() if e["engine"] == report["ceiling"]["default_engine"])
    reduced = dict(report.get("service_other_precisions", {}))
    if "service_reduced" in report:  # the fastest reduced precision, first
        reduced = {report["service_reduced"]["precision"]: report["service_reduced"], **reduced}
    return {f"default ({default})": (default, report["service"]),
            **{f"openvino {precision}": (f"openvino {precision}", runs) for precision, runs in reduced.items()}}


def shares(report: dict) -> dict:
    """Per served precision: the model's and decoding's core time an image, the limit, /service c16 and its share
    of the limit, the server's core time per request at c16 and what of it is neither, c1's p50 over decode plus
    the model's batch-1 time."""
    cores, decode = report["machine"]["cpus"], decode_ms(report)
    rows = {}
    for label, (engine, runs) in served(report).items():
        ceiling = report["ceiling"]["engines"][engine]
        model_core_ms = cores * 1000 / ceiling["b8"]
        limit = cores * 1000 / (model_core_ms + decode)
        c16, c1 = runs["c16"], runs["c1"]
        rows[label] = {"model_core_ms": round(model_core_ms, 2), "decode_ms": round(decode, 2),
                       "limit_img_s": round(limit, 1), "c16_img_s": c16["img_s"],
                       "share": round(c16["img_s"] / limit, 2), "server_core_ms": c16["server_core_ms"],
                       "stack_core_ms": round(c16["server_core_ms"] - model_core_ms - decode, 2),
                       "c16_by_thread": c16.get("server_core_ms_by_thread", {}), "c1_p50_ms": c1["p50_ms"],
                       "c1_p50_over_decode_and_b1_ms": round(c1["p50_ms"] - decode - 1000 / ceiling["b1"], 2)}
        if "mean_batch" in c16:
            rows[label].update(c16_mean_batch=c16["mean_batch"],
                               model_core_ms_at_c16_batch=round(core_ms_at(ceiling, cores, c16["mean_batch"]), 2))
    return rows


def rows(report: dict) -> list[str]:
    """The table docs/performance.md shows, from the run's shares (report["limit"]): one row per served
    precision, the floor below."""
    lines = ["| served | model core ms/img (b8) | decode ms | limit img/s | /service c16 img/s | share of limit "
             "| server core ms/req at c16 | of which the stack's | by thread: loop · decode · model · other "
             "| c1 p50 ms | c1 p50 over decode + b1 ms | c16 images a model call | model core ms/img at that batch |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, s in report["limit"].items():
        lines.append(f"| {label} | {s['model_core_ms']} | {s['decode_ms']} | {s['limit_img_s']} | {s['c16_img_s']} "
                     f"| {s['share']:.0%} | {s['server_core_ms']} | {s['stack_core_ms']} "
                     f"| {by_thread(s.get('c16_by_thread', {}))} | {s['c1_p50_ms']} "
                     f"| {s['c1_p50_over_decode_and_b1_ms']} | {s.get('c16_mean_batch', '—')} "
                     f"| {s.get('model_core_ms_at_c16_batch', '—')} |")
    floor = report.get("floor")
    if floor:
        for level in ("c1", "c16"):
            f = floor[level]
            lines.append(f"| floor: null model, {floor['photo_bytes']}-byte JPEG, {level} | — | — | — | {f['img_s']} "
                         f"| — | {f['server_core_ms']} | {f['server_core_ms']} "
                         f"| {by_thread(f.get('server_core_ms_by_thread', {}))} | {f['p50_ms']} | — "
                         f"| {f.get('mean_batch', '—')} | — |")
    return lines


def by_thread(split: dict[str, float]) -> str:
    """A run's core ms a request by thread (bench/under_load.py), as the table's "loop · decode · model · other"."""
    return " · ".join(str(split.get(role, 0)) for role in ("event loop", "decode", "model", "other")) if split else "—"
