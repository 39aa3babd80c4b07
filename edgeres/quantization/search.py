"""No dead ends: when INT8 falls short of the bar, try the remedies in order and keep the best.

The statistics are collected once. The range method and bias correction are chosen
in simulation (unless fixed); then the real artifact is built and measured. If it misses
the bar, layers are ranked by how much keeping each out of INT8 helps (simulated), and the
top 1, 2, 4, 8, ... are kept in the target's higher precision, each attempt built and
measured for real, until one meets the bar or the limit on kept layers is reached. If
none does, the other range methods and bias corrections (next closest in simulation) are
tried with the layers kept by the closest attempt. The last remedy, where the caller gives
it, is quantization-aware fine-tuning of the closest attempt's plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import PlanRefusedError
from ..metrics import Judged
from .design import QuantizationDesign, QuantizationPlan

LADDER = (1, 2, 4, 8, 16, 32)
OTHER_CHOICES = 2  # range methods / corrections tried after the ladder


@dataclass(frozen=True)
class Bar:
    """What an INT8 artifact must reach against FP32 on the evaluation images."""

    min_agreement: float  # top-1 agreement with FP32
    max_drop: float | None = None  # top-1 accuracy lost, in percentage points (labelled images only)

    def met(self, agreement: float, drop: float | None) -> bool:
        if agreement < self.min_agreement:
            return False
        return self.max_drop is None or drop is None or drop <= self.max_drop + 1e-9

    def describe(self) -> str:
        drop = f" and at most {self.max_drop:g} points of top-1 lost" if self.max_drop is not None else ""
        return f"top-1 agreement with FP32 of at least {self.min_agreement:.1%}{drop}"


@dataclass
class Measured(Judged):
    """An attempt's artifact, judged against FP32 for real, and its size."""

    size_mb: float = 0.0


@dataclass
class Attempt:
    plan: QuantizationPlan
    measured: Measured
    met: bool
    built: object = field(repr=False, default=None)  # what the target built, for the pipeline

    def row(self) -> dict:
        m = self.measured
        return {"range_method": self.plan.method, "bias_correction": self.plan.bias_correction,
                "kept_higher": list(self.plan.higher), "agreement": m.agreement, "accuracy": m.accuracy,
                "drop_points": m.drop_points, "mean_kl": m.mean_kl, "size_mb": m.size_mb, "met": self.met,
                "finetuned": self.plan.finetuned}


@dataclass
class SearchResult:
    best: Attempt
    attempts: list[Attempt]
    simulated: list[dict]  # the range methods and corrections compared in simulation
    sensitivity: list[tuple[str, float]]
    refused: list[dict] = field(default_factory=list)  # plans the target's compiler failed on, and why

    @property
    def met(self) -> bool:
        return self.best.met


def search(design: QuantizationDesign, attempt: Callable[[QuantizationPlan], tuple[Measured, object]], bar: Bar, *,
           method: str | None = None, bias_correction: bool | None = None, keep: tuple[str, ...] = (),
           max_kept: int = 16, log: Callable[[str], None] = print,
           finetune: Callable[[QuantizationPlan], QuantizationPlan | None] | None = None,
           always_finetune: bool = False) -> SearchResult:
    """Build INT8 artifacts until one meets `bar`; `attempt(plan)` builds one and measures it.

    `finetune(plan)`, the last remedy, gives a fine-tuned plan: tried when no calibration-only
    attempt meets the bar, or in any case with `always_finetune`.
    """
    plan, simulated = _first_plan(design, method, bias_correction, log)
    plan = plan.with_higher(keep)
    attempts = [_run(attempt, plan, bar, log)]
    ranking: list[tuple[str, float]] = []
    refused: list[dict] = []
    if not attempts[0].met and max_kept > len(keep):
        log("Ranking layers by how much keeping each out of INT8 helps (simulated)")
        ranking = design.sensitivity(plan)
        log("Most sensitive: " + ", ".join(f"{name} ({gain:.1e})" for name, gain in ranking[:5]))
        for count in [c for c in LADDER if len(keep) < c <= max_kept] or [max_kept]:
            chosen = tuple(dict.fromkeys((*keep, *(name for name, _ in ranking))))[:count]
            try:
                attempts.append(_run(attempt, plan.with_higher(chosen), bar, log))
            except PlanRefusedError as error:  # a vendor compiler that crashes on more kept layers: stop climbing
                refused.append({"kept_higher": list(chosen), "why": str(error)})
                log(f"Keeping {count} layers out: {error}; the search goes on with the attempts it has")
                break
            if attempts[-1].met:
                break
    if not any(a.met for a in attempts):
        closest = max(attempts, key=lambda a: _preference(a, bar))
        for row in sorted(simulated, key=lambda r: r["simulated_kl"])[1:1 + OTHER_CHOICES]:
            other = design.plan(row["range_method"], row["bias_correction"], closest.plan.higher)
            attempts.append(_run(attempt, other, bar, log))
            if attempts[-1].met:
                break
    if finetune is not None and (always_finetune or not any(a.met for a in attempts)):
        closest = max(attempts, key=lambda a: _preference(a, bar))
        tuned = finetune(closest.plan)
        if tuned is not None:  # None: it ended before learning anything
            attempts.append(_run(attempt, tuned, bar, log))
    best = max(attempts, key=lambda a: _preference(a, bar))
    return SearchResult(best, attempts, simulated, ranking, refused)


def _first_plan(design: QuantizationDesign, method: str | None, bias_correction: bool | None,
                log: Callable[[str], None]) -> tuple[QuantizationPlan, list[dict]]:
    methods = (method,) if method else None
    corrections = (bias_correction,) if bias_correction is not None else (True, False)
    if methods is not None and len(corrections) == 1:
        return design.plan(method, bias_correction), []
    from .ranges import AUTO_METHODS

    plan, table = design.best_plan(methods or AUTO_METHODS, corrections)
    log(f"Ranges by {plan.method}{', bias corrected' if plan.bias_correction else ''}: closest to FP32 of "
        f"{len(table)} simulated choices")
    return plan, table


def _run(attempt, plan: QuantizationPlan, bar: Bar, log: Callable[[str], None]) -> Attempt:
    measured, built = attempt(plan)
    met = bar.met(measured.agreement, measured.drop_points)
    kept = ", ".join(plan.higher) if plan.higher else "nothing"
    drop = "" if measured.drop_points is None else f", {measured.drop_points:+.2f} points top-1"
    log(f"{'Fine-tuned ' if plan.finetuned else ''}INT8 with {kept} kept out: agreement {measured.agreement:.2%}{drop} "
        f"({'meets' if met else 'misses'} the bar)")
    return Attempt(plan, measured, met, built)


def _preference(attempt: Attempt, bar: Bar) -> tuple:
    m = attempt.measured
    return preference(attempt.met, len(attempt.plan.higher), m.agreement, m.drop_points, bar)


def preference(met: bool, kept: int, agreement: float, drop_points: float | None, bar: Bar) -> tuple:
    """Met first, with the fewest layers kept (smaller, faster); unmet ones by how far they fell short."""
    if met:
        return (1, -kept, agreement)
    shortfall = max(0.0, bar.min_agreement - agreement)
    if bar.max_drop is not None and drop_points is not None:
        shortfall += max(0.0, drop_points - bar.max_drop) / 100
    return (0, -shortfall, -kept)
