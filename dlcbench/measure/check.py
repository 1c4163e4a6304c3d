"""Output checks against the reference: error metrics, tolerances by precision, verdicts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable

import numpy as np

from dlcbench.errors import BadInputError


@dataclass(frozen=True)
class Tolerance:
    """Pass criteria for one output.

    An element passes when ``|got - expected| <= abs + rel * |expected|``
    (``numpy.allclose``); the output also needs ``cosine >= cosine``. With
    ``elementwise=False`` (int8) only cosine and top-1 agreement are judged.
    """

    abs: float = 1e-4
    rel: float = 1e-3
    cosine: float = 0.999
    elementwise: bool = True
    min_top1: float = 0.0


TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(1e-4, 1e-3, 0.999),
    "fp16": Tolerance(1e-2, 5e-2, 0.995),
    "bf16": Tolerance(2e-2, 1e-1, 0.99),
    "int8": Tolerance(float("inf"), float("inf"), 0.99, elementwise=False, min_top1=1.0),
}


def parse_tolerance_overrides(specs: list[str] | None) -> dict[str, dict[str, float]]:
    """Parses ``[OUTPUT:]abs=1e-3,rel=1e-2,cosine=0.99`` strings into overrides by output (``*`` = all)."""
    result: dict[str, dict[str, float]] = {}
    for spec in specs or []:
        output, sep, rest = spec.rpartition(":")
        output = output if sep else "*"
        values = {}
        for item in filter(None, rest.split(",")):
            key, eq, value = item.partition("=")
            key = {"cos": "cosine", "atol": "abs", "rtol": "rel"}.get(key.strip(), key.strip())
            if not eq or key not in ("abs", "rel", "cosine", "min_top1"):
                raise BadInputError(f"bad tolerance {spec!r}; expected [OUTPUT:]abs=X,rel=Y,cosine=Z,min_top1=W")
            try:
                values[key] = float(value)
            except ValueError:
                raise BadInputError(f"bad tolerance value {value!r} in {spec!r}") from None
        result.setdefault(output, {}).update(values)
    return result


def check_override_outputs(overrides: dict[str, dict[str, float]] | None, outputs: Iterable[str]) -> None:
    """Refuses overrides for an output the model does not have (``*`` applies to every output).

    Raises:
        BadInputError: the message names the unknown outputs and the model's outputs.
    """
    names = list(outputs)
    unknown = sorted(set(overrides or {}) - {"*", *names})
    if unknown:
        raise BadInputError(
            f"tolerance for unknown output(s) {', '.join(map(repr, unknown))}; valid outputs: {', '.join(names)} "
            "(or no OUTPUT: prefix for all)"
        )


def tolerance_for(precision: str, output: str, overrides: dict[str, dict[str, float]] | None = None) -> Tolerance:
    """The tolerance of ``output`` at ``precision`` after ``*`` then per-output overrides."""
    if precision not in TOLERANCES:
        raise BadInputError(f"unknown precision {precision!r}; valid: {', '.join(TOLERANCES)}")
    tol = TOLERANCES[precision]
    for key in ("*", output):
        if overrides and key in overrides:
            tol = replace(tol, **overrides[key])
    return tol


@dataclass
class OutputCheck:
    """Metrics and verdict for one output."""

    name: str
    passed: bool
    metrics: dict[str, Any]
    tolerance: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    worst: list[dict[str, Any]] = field(default_factory=list)
    needed: dict[str, float] = field(default_factory=dict)


@dataclass
class CheckReport:
    """The verdict over all outputs."""

    passed: bool
    outputs: list[OutputCheck]

    @property
    def max_abs_error(self) -> float:
        return max((o.metrics.get("max_abs", 0.0) for o in self.outputs), default=0.0)

    def summary(self) -> str:
        """One line: PASS/FAIL with the worst errors."""
        verdict = "PASS" if self.passed else "FAIL"
        worst_cos = min((o.metrics.get("cosine", 1.0) for o in self.outputs), default=1.0)
        return f"{verdict} (max abs err {self.max_abs_error:.3g}, min cosine {worst_cos:.6f})"

    def failure_message(self) -> str:
        """Which outputs failed, their worst elements and the tolerance that would have passed."""
        parts = []
        for out in self.outputs:
            if out.passed:
                continue
            worst = "; ".join(f"[{w['index']}] got {w['got']:.6g} expected {w['expected']:.6g}" for w in out.worst[:3])
            needed = ", ".join(f"{k}>={v:.3g}" if k != "cosine" else f"cosine<={v:.6f}" for k, v in out.needed.items())
            parts.append(f"output {out.name}: {'; '.join(out.reasons)}; worst: {worst or 'n/a'}; would pass with {needed or 'n/a'}")
        return " | ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "outputs": [asdict(o) for o in self.outputs]}


def _topk_agreement(got: np.ndarray, expected: np.ndarray, k: int) -> float:
    ref_top1 = np.argmax(expected.reshape(-1, expected.shape[-1]), axis=-1)
    topk = np.argsort(-got.reshape(-1, got.shape[-1]), axis=-1)[:, :k]
    return float(np.mean([ref_top1[i] in topk[i] for i in range(len(ref_top1))]))


def compare_output(
    name: str, got: np.ndarray, expected: np.ndarray, tol: Tolerance, classifier: bool = False
) -> OutputCheck:
    """Compares one output with its reference."""
    got = np.asarray(got)
    expected = np.asarray(expected)
    if got.shape != expected.shape:
        return OutputCheck(
            name, False, {"shape": list(got.shape), "expected_shape": list(expected.shape)}, asdict(tol),
            [f"shape {list(got.shape)} != expected {list(expected.shape)}"],
        )
    g = got.astype(np.float64)
    e = expected.astype(np.float64)
    metrics: dict[str, Any] = {
        "nan": int(np.isnan(g).sum()), "inf": int(np.isinf(g).sum()),
        "ref_nan": int(np.isnan(e).sum()), "ref_inf": int(np.isinf(e).sum()),
    }
    reasons = []
    bad_new = (np.isnan(g) & ~np.isnan(e)) | (np.isinf(g) & ~np.isinf(e))
    if bad_new.any():
        reasons.append(f"{int(bad_new.sum())} NaN/Inf values the reference does not have")
    finite = np.isfinite(g) & np.isfinite(e)
    diff = np.abs(np.where(finite, g, 0.0) - np.where(finite, e, 0.0))  # no inf - inf warning on stderr
    mag = np.where(finite, np.abs(e), 0.0)
    metrics["max_abs"] = float(diff.max()) if diff.size else 0.0
    metrics["mean_abs"] = float(diff[finite].mean()) if finite.any() else 0.0
    metrics["max_rel"] = float((diff / np.maximum(mag, 1e-12)).max()) if diff.size else 0.0
    gf, ef = np.where(finite, g, 0.0).ravel(), np.where(finite, e, 0.0).ravel()
    denom = float(np.linalg.norm(gf) * np.linalg.norm(ef))
    metrics["cosine"] = float(gf @ ef / denom) if denom > 0 else (1.0 if not gf.any() and not ef.any() else 0.0)
    if classifier and e.ndim >= 1 and e.shape[-1] >= 2:
        metrics["top1_agreement"] = _topk_agreement(g, e, 1)
        if e.shape[-1] >= 5:
            metrics["top5_agreement"] = _topk_agreement(g, e, 5)

    needed: dict[str, float] = {}
    worst: list[dict[str, Any]] = []
    if tol.elementwise and diff.size:
        excess = diff - (tol.abs + tol.rel * mag)
        if (excess > 0).any():
            reasons.append(f"{int((excess > 0).sum())} of {diff.size} elements outside abs={tol.abs:g} rel={tol.rel:g}")
            needed["abs"] = float((diff - tol.rel * mag).max())
            needed["rel"] = float(((diff - tol.abs) / np.maximum(mag, 1e-12)).max())
        for flat in np.argsort(-excess.ravel())[:5]:
            idx = np.unravel_index(flat, diff.shape)
            worst.append({"index": [int(i) for i in idx], "got": float(g[idx]), "expected": float(e[idx])})
    if metrics["cosine"] < tol.cosine:
        reasons.append(f"cosine {metrics['cosine']:.6f} < {tol.cosine}")
        needed["cosine"] = metrics["cosine"]
    if tol.min_top1 and "top1_agreement" in metrics and metrics["top1_agreement"] < tol.min_top1:
        reasons.append(f"top-1 agreement {metrics['top1_agreement']:.3f} < {tol.min_top1}")
    return OutputCheck(name, not reasons, metrics, asdict(tol), reasons, worst, needed)


def check_outputs(
    got: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    precision: str = "fp32",
    overrides: dict[str, dict[str, float]] | None = None,
    classifier: bool = False,
) -> CheckReport:
    """Checks every reference output; a missing output fails.

    Args:
        got: Backend outputs by name.
        reference: Reference outputs by name (saved at export).
        precision: Selects the default tolerances (:data:`TOLERANCES`).
        overrides: Per-output (or ``*``) tolerance fields, see :func:`parse_tolerance_overrides`.
        classifier: Also compute top-1/top-5 agreement.

    Raises:
        BadInputError: ``overrides`` names an output ``reference`` does not have.
    """
    check_override_outputs(overrides, reference)
    results = []
    for name, expected in reference.items():
        tol = tolerance_for(precision, name, overrides)
        if name not in got:
            results.append(OutputCheck(name, False, {}, asdict(tol), [f"missing output (got {', '.join(got)})"]))
            continue
        results.append(compare_output(name, got[name], expected, tol, classifier))
    return CheckReport(all(r.passed for r in results), results)
