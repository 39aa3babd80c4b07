"""What `edgeres convert` proves about each artifact it writes: accuracy against FP32, latency, size.

Each set folder holds its own rows (report.json); the output folder's report.json,
report.md and report.png gather every set in it and are rebuilt at each conversion.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from ..benchmark import artifact_size, benchmark
from ..written import refuse_to_overwrite
from ..metrics import Judged

SET_REPORT = "report.json"
REPORT_JSON, REPORT_MD, REPORT_PNG = "report.json", "report.md", "report.png"
REPORT_FILES = (REPORT_JSON, REPORT_MD, REPORT_PNG)
LATENCY_RUNS = 30


def report_row(artifact: Path, record, judged: Judged, source: str, threads: int | None = None) -> dict:
    latency = benchmark([artifact], threads=threads, warmup=5, runs=LATENCY_RUNS)[0]
    quantization = record.quantization or {}
    return {
        "artifact": artifact.name, "model": f"{record.arch} ({record.source.get('checkpoint', 'no checkpoint')})",
        "target": record.target, "precision": record.precision,
        "size_mb": round(artifact_size(artifact) / 1e6, 3), "eval_images": judged.images, "eval_source": source,
        "accuracy": judged.accuracy, "fp32_accuracy": judged.fp32_accuracy, "agreement": judged.agreement,
        "mean_kl": judged.mean_kl, "latency_p50_ms": round(latency.p50_ms, 3), "fps": round(latency.fps, 1),
        "runtime": latency.runtime, "kept_higher": quantization.get("design", {}).get("kept_higher", []),
        "higher_precision": quantization.get("higher_precision"),
        "execution_precision": (record.verification or {}).get("execution_precision"),
        "modes": (record.verification or {}).get("modes", {}),
    }


def mode_lines(name: str, verification: dict) -> list[str]:
    """What running the artifact in each faster mode of its runtime costs, or why it was not measured."""
    lines = []
    for mode, found in (verification.get("modes") or {}).items():
        if found["measured"]:
            lines.append(f"{name} in {mode} (asked for; it runs in {verification['execution_precision']} by "
                         f"default): top-1 agreement with PyTorch {found['top1_agreement']:.2%}, largest logit "
                         f"difference {found['max_abs_logit_diff']:.2e} ({found['max_rel_logit_diff']:.2%} of the "
                         "largest logit), measured on the machine that converted")
        else:
            lines.append(f"{name} in {mode}: not measured, {found['reason']}")
    return lines


def folder_summary_files(out_dir: Path, name: str, rows: list[dict]) -> tuple[tuple[Path, Path], ...]:
    """The folder's report files with `name`'s rows replaced, written beside their final names.

    Returns (temporary, final) pairs, renamed in only once the set itself is in place.
    """
    check_report_files(out_dir)
    every = []
    for row_file in sorted(Path(out_dir).glob(f"*/{SET_REPORT}")):
        if row_file.parent.name != name and not row_file.parent.name.startswith("."):
            every += _set_rows(row_file)
    every += rows
    prepared = []
    for final, write in ((REPORT_JSON, lambda p: p.write_text(json.dumps({"artifacts": every}, indent=2) + "\n")),
                         (REPORT_MD, lambda p: p.write_text(markdown(every))),
                         (REPORT_PNG, lambda p: chart(every, p))):
        temporary = Path(out_dir) / f".{final}.{name}.part"
        write(temporary)
        prepared.append((temporary, Path(out_dir) / final))
    return tuple(prepared)


def check_report_files(out_dir: Path) -> None:
    """The folder's report.json/md/png are edgeres' to replace, or absent (else an error, before any work)."""
    refuse_to_overwrite(out_dir, REPORT_FILES, "--out", recognise=_is_ours)


def _set_rows(row_file: Path) -> list[dict]:
    """The rows of another set in the folder; a folder that is no edgeres set (or a damaged one) adds none."""
    from ..errors import EdgeresError
    from ..files import SMALL_TEXT_LIMIT, read_text
    from .output import foreign_entries

    try:
        if foreign_entries(row_file.parent):
            return []
        rows = json.loads(read_text(row_file, SMALL_TEXT_LIMIT, "set report")).get("artifacts", [])
    except (EdgeresError, ValueError, AttributeError, OSError):
        return []
    return [row for row in rows if isinstance(row, dict) and REPORT_ROW_KEYS <= set(row)]


REPORT_ROW_KEYS = {"artifact", "precision", "size_mb", "eval_images", "eval_source", "accuracy", "fp32_accuracy",
                   "agreement", "mean_kl", "latency_p50_ms", "fps", "kept_higher"}


def _is_ours(path: Path) -> bool:
    """A report file edgeres wrote before it kept a list of what it writes."""
    from ..errors import EdgeresError
    from ..files import SMALL_TEXT_LIMIT, read_text

    try:
        if path.name == REPORT_PNG:
            return _is_ours(path.with_name(REPORT_JSON))  # written together
        text = read_text(path, SMALL_TEXT_LIMIT, "report", errors="replace")
    except EdgeresError:
        return False
    if path.name == REPORT_MD:
        return text.startswith("# edgeres conversion report")
    try:
        return isinstance(json.loads(text).get("artifacts"), list)
    except (ValueError, AttributeError):
        return False


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def markdown(rows: list[dict]) -> str:
    lines = [
        "# edgeres conversion report", "",
        "Accuracy: top-1 on the evaluation images (FP32 = the PyTorch model on the same images); agreement: "
        "top-1 agreement with the PyTorch model; latency: `Classifier.predict` on a 640x480 frame, median, on "
        "the machine that converted.", "",
        "| artifact | precision | MB | images | accuracy | FP32 | agreement | mean KL | p50 ms | FPS | kept out of INT8 |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['artifact']} | {r['precision']} | {r['size_mb']:.1f} | {r['eval_images']} {r['eval_source']} | "
            f"{_percent(r['accuracy'])} | {_percent(r['fp32_accuracy'])} | {_percent(r['agreement'])} | "
            f"{r['mean_kl']:.2e} | {r['latency_p50_ms']:.2f} | {r['fps']:.0f} | {', '.join(r['kept_higher']) or '-'} |"
        )
    stood_in = [r for r in rows if r.get("judged_on")]
    if stood_in:  # an emulated artifact: its accuracy is its stand-in's, its latency the emulator's
        lines += [""] + [f"- {r['artifact']}: accuracy judged on {r['judged_on']}; latency measured on "
                         f"{r.get('runtime', 'its runtime')}" for r in stood_in]
    modes = [line for r in rows for line in mode_lines(r["artifact"], r)]
    if modes:
        lines += ["", "Faster modes (`--precision`, `Classifier(..., precision=...)`):", "",
                  *(f"- {line}" for line in modes)]
    for r in rows:
        if r.get("search"):
            lines += ["", *_search_lines(r)]
    return "\n".join(lines) + "\n"


ATTEMPT_COLUMNS = ("#", "ranges", "bias corr.", "kept out of INT8", "agreement", "top-1 drop (pt)", "MB", "bar")


def attempt_cells(search: dict) -> list[list[str]]:
    """The INT8 attempts as table cells (ATTEMPT_COLUMNS): the report's table and the CLI's."""
    cells = []
    for index, attempt in enumerate(search["attempts"]):
        drop = "n/a" if attempt["drop_points"] is None else f"{attempt['drop_points']:+.2f}"
        bar = ("met" if attempt["met"] else "missed") + (" (kept)" if index == search["chosen"] else "")
        method = attempt["range_method"] + (", fine-tuned" if attempt.get("finetuned") else "")
        cells.append([str(index), method, "yes" if attempt["bias_correction"] else "no",
                      ", ".join(attempt["kept_higher"]) or "-", f"{attempt['agreement']:.2%}", drop,
                      f"{attempt['size_mb']:.1f}", bar])
    return cells


def _search_lines(row: dict) -> list[str]:
    search = row["search"]
    lines = [f"## {row['artifact']}: INT8 attempts ({'bar met' if search['met'] else 'bar NOT met'}; "
             f"evaluated on {search['evaluated_on']})", "",
             "| " + " | ".join(ATTEMPT_COLUMNS) + " |", "|---:|---|---|---|---:|---:|---:|---|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in attempt_cells(search)]
    if search.get("fp32_stability"):
        stability = search["fp32_stability"]
        lines += ["", stability.get("note") or f"FP32 itself keeps its answer on {stability['agreement']:.1%} of "
                  f"{stability['images']} of these images when every pixel moves by one grey level, about the size "
                  "of the input's INT8 rounding"]
    if search["sensitivity_top"]:
        lines += ["", "Most sensitive layers (simulated KL gained by keeping each out of INT8): "
                  + ", ".join(f"{name} {gain:.1e}" for name, gain in search["sensitivity_top"][:8])]
    if search.get("finetune"):
        run = search["finetune"]
        curve = ", ".join(f"{p['agreement']:.1%}" for p in run["curve"] if p["agreement"] is not None)
        lines += ["", f"Fine-tuned (quantization-aware) on {run['data']}: {run['steps']} of {run['planned_steps']} "
                  f"steps in {run['seconds']:.0f} s (ended by {run['stopped']}); simulated held-out agreement along "
                  f"the run: {curve or 'not measured'}"]
    if row.get("all_int8"):
        base = row["all_int8"]
        lines += ["", f"Cost of the layers kept out: {row['size_mb'] - base['size_mb']:+.2f} MB, "
                  f"{row['latency_p50_ms'] - base['latency_p50_ms']:+.2f} ms per frame against all-INT8 "
                  f"({base['size_mb']:.1f} MB, {base['latency_p50_ms']:.2f} ms)"]
    return lines


def chart(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a build machine
    import matplotlib.pyplot as plt

    figure = chart_figure(rows)
    with open(path, "wb") as stream:
        figure.savefig(stream, format="png", dpi=100)
    plt.close(figure)


def chart_figure(rows: list[dict]):
    """Each artifact as a point, accuracy (or agreement with FP32 where unlabelled) against latency,
    its values written beside it; the FP32 model's accuracy as a line; a title naming model and data."""
    import matplotlib.pyplot as plt

    labelled = all(r["accuracy"] is not None for r in rows)
    quality = [100 * (r["accuracy"] if labelled else r["agreement"]) for r in rows]
    latency = [r["latency_p50_ms"] for r in rows]
    tuned = [r for r in rows if ((r.get("search") or {}).get("finetune") or {}).get("curve")]
    if tuned:
        figure, (axis, curve_axis) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 2]})
        _finetune_panel(curve_axis, tuned)
    else:
        figure, axis = plt.subplots(figsize=(9, 5.5))
    axis.scatter(latency, quality, s=60, color="#4c72b0", zorder=3)
    for row, x, y in zip(rows, latency, quality):
        axis.annotate(f"{row['artifact']}\n{y:.2f}%, {x:.2f} ms, {row['size_mb']:.1f} MB", (x, y),
                      textcoords="offset points", xytext=(8, 4), fontsize=8)
    fp32 = next((100 * r["fp32_accuracy"] for r in rows if r.get("fp32_accuracy") is not None), None)
    if labelled and fp32 is not None:
        axis.axhline(fp32, color="#55a868", linestyle="--", label=f"FP32 PyTorch model: {fp32:.2f}%")
        axis.legend(loc="lower right", fontsize=8)
    axis.set_xlabel("latency per 640x480 frame, ms (median, this machine)")
    axis.set_ylabel("top-1 accuracy, %" if labelled else "top-1 agreement with the FP32 model, %")
    axis.set_xlim(0, max(latency) * 1.6)  # room for the labels on the right
    shown = quality + ([fp32] if labelled and fp32 is not None else [])
    pad = max(0.5, 0.2 * (max(shown) - min(shown)))
    low, high = min(shown) - pad, max(shown) + pad
    axis.set_ylim(low, high)  # room for the labels above the highest point
    top = min(high, 100) + 1e-9  # no tick at 100.4%: the labels' room, not a value
    axis.set_yticks([tick for tick in axis.get_yticks() if low - 1e-9 <= tick <= top])
    axis.set_ylim(low, high)  # set_yticks widens the view to the ticks it is given
    models = sorted({r["model"] for r in rows if r.get("model")})  # reports from before 0.1 have none
    sources = sorted({f"{r['eval_images']} {r['eval_source']} images" for r in rows})
    title = (f"{', '.join(models)}: " if models else "") + (f"{'accuracy' if labelled else 'agreement'} "
                                                            f"against latency, on {', '.join(sources)}")
    axis.set_title(textwrap.fill(title, 100), fontsize=10)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def _finetune_panel(axis, rows: list[dict]) -> None:
    """The fine-tuning runs: loss on the training images and simulated agreement on the held-out ones."""
    loss_axis = axis.twinx()
    for row in rows:
        curve = row["search"]["finetune"]["curve"]
        steps = [point["step"] for point in curve]
        measured = [(point["step"], 100 * point["agreement"]) for point in curve if point["agreement"] is not None]
        if measured:
            axis.plot(*zip(*measured), marker="o", label=f"{row['artifact']}: held-out agreement")
        loss_axis.plot(steps, [point["loss"] for point in curve], linestyle="--", color="#999999",
                       label=f"{row['artifact']}: training loss")
    axis.set_xlabel("fine-tuning step")
    axis.set_ylabel("simulated top-1 agreement with FP32 on held-out images, %")
    loss_axis.set_ylabel("distillation loss (KL) on training images")
    axis.set_title("quantization-aware fine-tuning", fontsize=10)
    lines, labels = axis.get_legend_handles_labels()
    more, more_labels = loss_axis.get_legend_handles_labels()
    axis.legend(lines + more, labels + more_labels, fontsize=7, loc="lower right")
    axis.grid(alpha=0.3)
