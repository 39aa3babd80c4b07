"""What the command line prints: tables on a terminal, tab-separated lines when piped, one red line on failure.

Cells are data (labels, paths, rule details), never markup: a label "one [b]" prints as is.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from rich.console import Console
from rich.markup import escape
from rich.progress import track
from rich.table import Table

console = Console()
err_console = Console(stderr=True)
for _console in (console, err_console):  # piped or redirected: whole lines, not wrapped at 80 columns
    _console.soft_wrap = not _console.is_terminal


def progress(items: Iterable[Any], description: str, total: int) -> Iterable[Any]:
    return track(items, description=description, total=total, console=err_console, transient=True)


def log(message: str) -> None:
    err_console.print(f"[dim]{escape(message)}[/dim]")


def warn(message: str) -> None:
    err_console.print(f"[yellow]{escape(message)}[/yellow]")


def fail_line(message: str) -> None:
    # escaped: an install hint's [x86] or a path's brackets are text, not rich markup
    err_console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True, highlight=False)


def say(message: str, style: str | None = None) -> None:
    console.print(f"[{style}]{escape(message)}[/{style}]" if style else escape(message))


def passed(name: str, detail: str) -> None:
    console.print(f"[green]{escape(name)} passed[/green] " + escape(f"({detail})"))


def show_json(payload: Any) -> None:
    console.print_json(payload if isinstance(payload, str) else json.dumps(payload))


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, header: bool = True,
          no_wrap: bool = True) -> None:
    grid = Table(title=title, show_header=header)
    for column in columns:
        grid.add_column(column, no_wrap=no_wrap)
    for row in rows:
        grid.add_row(*(str(cell) for cell in row))
    show(grid)


def pairs(title: str, rows: dict[str, Any]) -> None:
    """A two-column table of names and values, without a header."""
    table(title, ("", ""), rows.items(), header=False, no_wrap=False)


def show(grid: Table) -> None:
    """A table on a terminal; piped or redirected, plain tab-separated lines, so no cell is cut."""
    from rich.text import Text

    for column in grid.columns:
        column._cells = [Text(cell) if isinstance(cell, str) else cell for cell in column._cells]
    if console.is_terminal:
        console.print(grid)
        return
    if grid.title:
        print(grid.title)
    if grid.show_header:
        print("\t".join(_plain(column.header) for column in grid.columns))
    for cells in zip(*(column.cells for column in grid.columns)):
        print("\t".join(_plain(cell) for cell in cells))


def _plain(cell: Any) -> str:
    from rich.text import Text

    return cell.plain if isinstance(cell, Text) else str(cell)


class Steps:
    """One live display for a long command: the current step with a spinner and its time, and a
    bar for each counted loop inside it (rich allows one live display at a time)."""

    def __init__(self, progress_display) -> None:
        self._progress = progress_display
        self._step = progress_display.add_task("", total=None)

    def log(self, message: str) -> None:
        log(message)
        self._progress.update(self._step, description=escape(message))

    def track(self, items: Iterable[Any], description: str, total: int) -> Iterable[Any]:
        task = self._progress.add_task(escape(description), total=total)
        try:
            for item in items:
                yield item
                self._progress.advance(task)
        finally:
            self._progress.remove_task(task)


@contextlib.contextmanager
def steps(first: str) -> Iterator[Steps]:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                  console=err_console, transient=True) as display:
        current = Steps(display)
        current.log(first)
        yield current


# --- edgeres convert ---------------------------------------------------------------------------

def conversion(result: Any, out: Path) -> None:
    from .artifact import read_sidecar
    from .conversion.report import ATTEMPT_COLUMNS, REPORT_FILES, attempt_cells

    for path in (result.path, *result.companions):
        artifact(path, read_sidecar(path))
    if result.search:
        table(f"INT8 attempts on {result.search['evaluated_on']}", ATTEMPT_COLUMNS, attempt_cells(result.search))
    for row in result.rows:
        report_row(row)
    if result.rows:
        say(f"Report: {', '.join(str(out / name) for name in REPORT_FILES)}")


def artifact(path: Path, record: Any) -> None:
    from .benchmark import artifact_size
    from .conversion.report import mode_lines

    verification = record.verification
    table(f"Wrote {path}", ("artifact", "precision", "size", "vs PyTorch: top-1 agree", "max |logit diff|",
                            "checked on"),
          [(path.name, record.precision, f"{artifact_size(path) / 1e6:.1f} MB", f"{verification['top1_agreement']:.1%}",
            f"{verification['max_abs_logit_diff']:.2e}", f"{verification['samples']} {verification['sample_source']}")])
    for check in record.checks:
        colour, word = ("green", "checked") if check["passed"] else ("yellow", "note")
        console.print(f"[{colour}]{word}[/{colour}] " + escape(f"{check['rule']}: {check['detail']}"))
    for line in mode_lines(path.name, verification):
        say(line)
    _device_advice(path, record)


def _device_advice(path: Path, record: Any) -> None:
    profile = record.device_profile
    if not profile:
        return
    name = f"[yellow]{escape(profile['name'])}:[/yellow] "
    if profile["recommended_precision"] != record.precision:
        console.print(name + escape(f"{profile['recommended_precision']} is recommended for this device: "
                                    f"{profile['why']}"))
    mode = profile.get("float_mode", "fp32")
    if mode != "fp32" and record.precision != "int8":
        console.print(name + escape(
            f"run float artifacts in {mode} there (--precision {mode}) if its cost above is acceptable; where it "
            f"was not measured, `edgeres verify {path.name} --precision {mode}` on the device measures it"))
    for key, value in profile.get("options", {}).items():
        say(f"On {profile['name']} ({key}): {value.replace('MODEL', path.with_suffix('').name)}")


def report_row(row: dict) -> None:
    accuracy = "" if row["accuracy"] is None else f"top-1 {row['accuracy']:.2%} (FP32 {row['fp32_accuracy']:.2%}), "
    say(f"{row['artifact']} on {row['eval_images']} {row['eval_source']} images: {accuracy}agreement with FP32 "
        f"{row['agreement']:.2%}, mean KL {row['mean_kl']:.2e}; {row['latency_p50_ms']:.2f} ms per 640x480 frame "
        f"({row['fps']:.0f} FPS) on {row['runtime']}")
    if row["kept_higher"]:
        say(f"Kept out of INT8 ({row['higher_precision']}): {', '.join(row['kept_higher'])}")
    if row.get("all_int8"):
        base = row["all_int8"]
        say(f"Their cost: {row['size_mb'] - base['size_mb']:+.2f} MB, "
            f"{row['latency_p50_ms'] - base['latency_p50_ms']:+.2f} ms per frame against all-INT8")


# --- running artifacts -------------------------------------------------------------------------

def predictions(results: dict[str, list]) -> None:
    for image_path, found in results.items():
        table(image_path, ("rank", "label", "class", "probability"),
              [(rank, p.label, p.index, f"{p.probability:.4f}") for rank, p in enumerate(found, 1)], no_wrap=False)


def record_info(artifact_path: Path, record: Any) -> None:
    pre = record.preprocess
    rows = {
        "model": f"{record.arch}, {record.num_classes} classes",
        "target / format": f"{record.target} / {record.format}",
        "precision": record.precision,
        "input": ", ".join(f"{t.name} {t.shape} {t.dtype} {t.layout or ''}" for t in record.inputs),
        "output": ", ".join(f"{t.name} {t.shape} {t.dtype}" for t in record.outputs),
        "preprocess": f"resize {pre['resize']}, crop {pre['crop']}, {pre['color']}, mean {pre['mean']}, std {pre['std']}",
        "labels": ", ".join(record.labels[:8]) + (" ..." if len(record.labels) > 8 else ""),
        "source": ", ".join(f"{k}={v}" for k, v in record.source.items()),
        "edgeres": record.edgeres_version,
    }
    if record.device_profile:
        rows["device profile"] = f"{record.device_profile['name']}: {record.device_profile['cpu']}"
        for key, value in record.device_profile.get("options", {}).items():
            rows[f"on the device ({key})"] = value
    if record.quantization:
        rows["quantization"] = ", ".join(f"{k}: {v}" for k, v in record.quantization.items())
    if record.calibration:
        c = record.calibration
        where = c.get("folder") or c.get("video") or c.get("file")
        rows["calibration"] = (f"{c.get('used')} images from {where} ({c.get('source')}), {c.get('skipped')} skipped, "
                               f"{c.get('method')}")
    if record.golden:
        rows["golden samples"] = f"{record.golden['samples']} in {record.golden['file']} (edgeres verify)"
    if record.verification:
        v = record.verification
        rows["verified"] = (f"top-1 agreement {v['top1_agreement']:.1%}, max |logit diff| "
                            f"{v['max_abs_logit_diff']:.2e} on {v['samples']} {v['sample_source']}")
    for check in record.checks:
        rows[f"rule: {check['rule']}"] = ("passed: " if check["passed"] else "FAILED: ") + check["detail"]
    pairs(str(artifact_path), rows)


def evaluation(data: Path, results: dict, reference_name: str | None, mapping: str) -> None:
    first = next(iter(results.values()))
    table(f"{data} ({first.images} images; reference: {reference_name or 'none'})",
          ("artifact", "mode", "top-1", "top-5", "agree", "mean KL"),
          [(name, m.execution_precision, f"{m.top1:.2%}", f"{m.top5:.2%}",
            "-" if m.agreement is None else f"{m.agreement:.2%}", "-" if m.mean_kl is None else f"{m.mean_kl:.2e}")
           for name, m in results.items()])
    table("Accuracy per class", ("class", *results),
          [(label, *(f"{m.per_class[label]:.1%}" for m in results.values())) for label in first.per_class])
    if mapping != "by label":
        warn(f"class folders matched {mapping}")


def benchmarks(results: list, runs: int, threads: int | None) -> None:
    grid = Table(title=f"Classifier.predict on a 640x480 frame (ms), {runs} runs, threads {threads or 'default'}")
    grid.add_column("artifact", overflow="fold")
    grid.add_column("runtime", overflow="fold")
    grid.add_column("mode", no_wrap=True)
    for column in ("MB", "1st", "p50", "p90", "p99", "FPS", "RSS MB"):
        grid.add_column(column, no_wrap=True, justify="right")
    for r in results:
        grid.add_row(r.artifact, r.runtime.split(" ")[0], r.execution_precision, f"{r.size_mb:.1f}",
                     f"{r.first_inference_ms:.0f}", f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}", f"{r.p99_ms:.2f}",
                     f"{r.fps:.0f}", f"{r.peak_rss_mb:.0f}")
    show(grid)


def golden_check(artifact_path: Path, check: Any, classifier: Any) -> None:
    pairs(f"{artifact_path.name} on {classifier.backend_name} in {classifier.execution_precision}", {
        "golden samples": check.samples,
        "vs FP32 reference": f"top-1 {check.top1_vs_reference:.0%}, largest logit error "
                             f"{check.max_abs_vs_reference:.3g} (largest logit {check.scale:.3g})",
        "vs this artifact at conversion": f"top-1 {check.top1_vs_expected:.0%}, largest logit difference "
                                          f"{check.max_abs_vs_expected:.3g}",
    })


def video_summary(artifact_path: Path, source: str, summary: Any) -> None:
    pairs(f"{artifact_path.name} on {source}", {
        "frames read / classified / dropped": f"{summary.frames_read} / {summary.frames_classified} / "
                                               f"{summary.frames_dropped} ({summary.classified_share:.0%} classified)",
        "FPS mean / p5": f"{summary.fps_mean:.1f} / {summary.fps_p5:.1f}",
        "latency capture to result": f"{summary.latency_ms_mean:.1f} ms",
        **({"source failed": summary.error} if summary.error else {}),
        **{f"wrote {kind}": path for kind, path in summary.outputs.items()},
    })


def streams_summary(artifact_path: Path, summary: Any) -> None:
    table(f"{artifact_path.name} on {len(summary.streams)} streams",
          ("stream", "source", "read / classified / dropped", "FPS mean / p5", "latency mean / p95", "ended"),
          [(f"#{i + 1}", source, f"{s.frames_read} / {s.frames_classified} / {s.frames_dropped}",
            f"{s.fps_mean:.1f} / {s.fps_p5:.1f}", f"{s.latency_ms_mean:.0f} / {s.latency_ms_p95:.0f} ms",
            f"failed: {s.error}" if s.error else "")
           for i, (source, s) in enumerate(zip(summary.sources, summary.streams))])
    say(f"{summary.fps_total:.1f} frames classified per second in all, {summary.frames_per_round:.2f} frames "
        f"classified together per round ({summary.rounds} rounds, {summary.how})"
        + "".join(f"; wrote {path}" for path in summary.outputs.values()))


def demo(report: dict, out: Path, weights: str | None) -> None:
    rows, video = report["artifacts"], report["video"]
    data_name = "crops of scikit-image's photos" if weights else "held-out digits"
    table(f"Artifacts on {data_name} (this machine)", ("artifact", "runtime", "MB", "top-1", "agree*", "ms"),
          [(row["artifact"], row["runtime"].split(" ")[0], f"{row['size_mb']:.1f}",
            "n/a" if row["accuracy"] is None else f"{row['accuracy']:.1%}", f"{row['agreement']:.1%}",
            f"{row['ms_per_frame']:.2f}") for row in rows])
    say("* top-1 agreement with the first (FP32 ONNX) artifact; ms: Classifier.predict per image, preprocessing "
        f"included. Report: {out / 'report.json'}")
    say(f"Video ({video['artifact']}, real time): {video['frames_classified']}/{video['frames_read']} frames "
        f"classified, {video['fps_mean']:.1f} FPS mean, {video['fps_p5']:.1f} FPS p5; annotated video: "
        f"{video['outputs'].get('video')}")
