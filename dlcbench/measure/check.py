"""Output checks against the reference: error metrics, tolerances by precision, verdicts.

Non-finite values are judged by position: a NaN/Inf where the reference is finite fails, so does a finite
value where the reference is NaN/Inf, a NaN where it is Inf (or the reverse) and an Inf of the opposite sign.
A reference that is not finite makes the check fail as :data:`INVALID_REFERENCE` even when the backend
matches it: such a check cannot tell right from wrong. Given the inputs, the check also flags outputs that
do not depend on them (``trivial``): a check of such an output passes a backend that ignores its input.
"""

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
    # int8 flips the odd close call: on many real rows (--inputs, a dataset model's held-out batches) a top-1
    # agreement of 1.0 fails sound quantizations; the accuracy budget (--accuracy) is the measure that counts.
    "int8": Tolerance(float("inf"), float("inf"), 0.99, elementwise=False, min_top1=0.98),
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


#: Failure category of a check whose outputs differ from a finite reference (or are missing, misshapen).
ACCURACY_FAIL = "accuracy_fail"
#: Failure category of a check whose only fault is a reference holding NaN/Inf: it cannot tell right from wrong.
INVALID_REFERENCE = "invalid_reference"


@dataclass
class OutputCheck:
    """Metrics and verdict for one output.

    ``category`` is None when it passed, else :data:`ACCURACY_FAIL` or :data:`INVALID_REFERENCE`;
    ``trivial`` says why the check of this output cannot discriminate (empty when it can, or was not judged).
    """

    name: str
    passed: bool
    metrics: dict[str, Any]
    tolerance: dict[str, Any]
    reasons: list[str] = field(default_factory=list)
    worst: list[dict[str, Any]] = field(default_factory=list)
    needed: dict[str, float] = field(default_factory=dict)
    category: str | None = None
    trivial: str = ""


@dataclass
class CheckReport:
    """The verdict over all outputs; ``note`` says how the check batches were compared when not as one."""

    passed: bool
    outputs: list[OutputCheck]
    note: str = ""

    @property
    def category(self) -> str | None:
        """None when passed; :data:`INVALID_REFERENCE` when every failure is the reference's, else :data:`ACCURACY_FAIL`."""
        failed = [o for o in self.outputs if not o.passed]
        if not failed:
            return None
        return INVALID_REFERENCE if all(o.category == INVALID_REFERENCE for o in failed) else ACCURACY_FAIL

    @property
    def trivial_check(self) -> bool:
        """True when the check of some output cannot discriminate (see :func:`check_outputs`); not a failure."""
        return any(o.trivial for o in self.outputs)

    @property
    def max_abs_error(self) -> float:
        return max((o.metrics.get("max_abs", 0.0) for o in self.outputs), default=0.0)

    def summary(self) -> str:
        """One line: PASS/FAIL/INVALID REFERENCE with the worst errors, and whether the check is trivial."""
        verdict = "PASS" if self.passed else ("INVALID REFERENCE" if self.category == INVALID_REFERENCE else "FAIL")
        worst_cos = min((o.metrics.get("cosine", 1.0) for o in self.outputs), default=1.0)
        trivial = "; TRIVIAL CHECK" if self.trivial_check else ""
        return f"{verdict} (max abs err {self.max_abs_error:.3g}, min cosine {worst_cos:.6f}){trivial}"

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
        return {"passed": self.passed, "category": self.category, "trivial_check": self.trivial_check,
                "outputs": [asdict(o) for o in self.outputs], **({"note": self.note} if self.note else {})}


def _first_at(mask: np.ndarray, limit: int = 3) -> str:
    """The first ``limit`` indices where ``mask`` holds, as ``[0, 1], [0, 3]``."""
    return ", ".join(str([int(i) for i in idx]) for idx in np.argwhere(mask)[:limit])


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
            [f"shape {list(got.shape)} != expected {list(expected.shape)}"], category=ACCURACY_FAIL,
        )
    g = got.astype(np.float64)
    e = expected.astype(np.float64)
    g_nan, e_nan, g_fin, e_fin = np.isnan(g), np.isnan(e), np.isfinite(g), np.isfinite(e)
    metrics: dict[str, Any] = {
        "nan": int(g_nan.sum()), "inf": int(np.isinf(g).sum()),
        "ref_nan": int(e_nan.sum()), "ref_inf": int(np.isinf(e).sum()),
    }
    reasons = []
    if not e_fin.all():
        reasons.append(f"the reference is not finite ({metrics['ref_nan']} NaN, {metrics['ref_inf']} Inf, first at "
                       f"{_first_at(~e_fin)}): the check cannot tell right from wrong")
    # Where the reference is NaN/Inf the output must match it exactly: NaN where NaN, the same signed Inf.
    new_nonfinite = ~g_fin & e_fin
    lost_nonfinite = g_fin & ~e_fin
    opposite_inf = np.isinf(g) & np.isinf(e) & (g != e)
    nan_for_inf = (g_nan & np.isinf(e)) | (np.isinf(g) & e_nan)
    if new_nonfinite.any():
        reasons.append(f"{int(new_nonfinite.sum())} NaN/Inf values where the reference is finite, "
                       f"first at {_first_at(new_nonfinite)}")
    if lost_nonfinite.any():
        reasons.append(f"{int(lost_nonfinite.sum())} finite values where the reference is NaN/Inf, "
                       f"first at {_first_at(lost_nonfinite)}")
    if opposite_inf.any():
        reasons.append(f"{int(opposite_inf.sum())} Inf values of the opposite sign, first at {_first_at(opposite_inf)}")
    if nan_for_inf.any():
        reasons.append(f"{int(nan_for_inf.sum())} NaN where the reference is Inf or Inf where it is NaN, "
                       f"first at {_first_at(nan_for_inf)}")
    nonfinite_mismatch = new_nonfinite | lost_nonfinite | opposite_inf | nan_for_inf
    metrics["nonfinite_mismatches"] = int(nonfinite_mismatch.sum())
    real_failure = bool(new_nonfinite.any())  # a failure at a position where the reference is finite
    finite = g_fin & e_fin
    diff = np.abs(np.where(finite, g, 0.0) - np.where(finite, e, 0.0))  # no inf - inf warning on stderr
    mag = np.where(finite, np.abs(e), 0.0)
    # A NaN/Inf where the reference differs is an unbounded error, not the 0 of the finite positions.
    unbounded = float("inf") if nonfinite_mismatch.any() else None
    metrics["max_abs"] = unbounded or (float(diff.max()) if diff.size else 0.0)
    metrics["mean_abs"] = float(diff[finite].mean()) if finite.any() else 0.0
    metrics["max_rel"] = unbounded or (float((diff / np.maximum(mag, 1e-12)).max()) if diff.size else 0.0)
    gf, ef = np.where(finite, g, 0.0).ravel(), np.where(finite, e, 0.0).ravel()
    denom = float(np.linalg.norm(gf) * np.linalg.norm(ef))
    metrics["cosine"] = float(gf @ ef / denom) if denom > 0 else (1.0 if not gf.any() and not ef.any() else 0.0)
    if classifier and e.ndim >= 1 and e.shape[-1] >= 2:
        metrics["top1_agreement"] = _topk_agreement(g, e, 1)
        if e.shape[-1] >= 5:
            metrics["top5_agreement"] = _topk_agreement(g, e, 5)

    needed: dict[str, float] = {}
    worst: list[dict[str, Any]] = [
        {"index": [int(i) for i in idx], "got": float(g[tuple(idx)]), "expected": float(e[tuple(idx)])}
        for idx in np.argwhere(nonfinite_mismatch)[:5]
    ]
    if tol.elementwise and diff.size:
        excess = diff - (tol.abs + tol.rel * mag)
        if (excess > 0).any():
            real_failure = True
            reasons.append(f"{int((excess > 0).sum())} of {diff.size} elements outside abs={tol.abs:g} rel={tol.rel:g}")
            needed["abs"] = float((diff - tol.rel * mag).max())
            needed["rel"] = float(((diff - tol.abs) / np.maximum(mag, 1e-12)).max())
        for flat in np.argsort(-excess.ravel())[:5 - len(worst)]:
            idx = np.unravel_index(flat, diff.shape)
            worst.append({"index": [int(i) for i in idx], "got": float(g[idx]), "expected": float(e[idx])})
    if metrics["cosine"] < tol.cosine:
        real_failure = True
        reasons.append(f"cosine {metrics['cosine']:.6f} < {tol.cosine}")
        needed["cosine"] = metrics["cosine"]
    if tol.min_top1 and "top1_agreement" in metrics and metrics["top1_agreement"] < tol.min_top1:
        real_failure = True
        reasons.append(f"top-1 agreement {metrics['top1_agreement']:.3f} < {tol.min_top1}")
    if nonfinite_mismatch.any():
        needed = {}  # no tolerance passes a NaN/Inf the reference does not have
    category = None if not reasons else (ACCURACY_FAIL if real_failure or e_fin.all() else INVALID_REFERENCE)
    return OutputCheck(name, not reasons, metrics, asdict(tol), reasons, worst, needed, category)


def join_batches(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Joins batches of arrays by name into one: along the leading (batch) axis, 0-d arrays stacked.

    Indices into the result count rows over the batches in order, the first batch's rows first.
    """
    if len(batches) == 1:
        return dict(batches[0])
    joined = {}
    for name in batches[0]:
        arrays = [np.asarray(b[name]) for b in batches if name in b]
        joined[name] = np.stack(arrays) if arrays[0].ndim == 0 else np.concatenate(arrays)
    return joined


def joinable(batches: list[dict[str, np.ndarray]]) -> bool:
    """Whether :func:`join_batches` can join these batches: each name's arrays agree on all but the leading axis
    (an output whose shape depends on the data, such as the boxes kept by a non-max suppression, may not)."""
    for name in batches[0]:
        shapes = {np.shape(b[name])[1:] if np.ndim(b[name]) else None for b in batches if name in b}
        if len(shapes) > 1:
            return False
    return True


def distinct_rows(inputs: dict[str, np.ndarray]) -> list[int]:
    """Indices of the input rows (along the leading axis) that differ from every earlier row; [] if not batch-major."""
    arrays = [np.ascontiguousarray(v) for v in inputs.values()]
    if not arrays or any(a.ndim == 0 for a in arrays) or len({a.shape[0] for a in arrays}) != 1:
        return []
    first: dict[tuple[bytes, ...], int] = {}
    for row in range(arrays[0].shape[0]):
        first.setdefault(tuple(a[row].tobytes() for a in arrays), row)
    return sorted(first.values())


def rows_constant(rows: np.ndarray, tol: Tolerance) -> bool:
    """True when every row (leading axis) equals the first within ``tol``'s abs/rel bound.

    NaN matches NaN and Inf the same Inf; a tolerance that is not elementwise (int8) is replaced by fp32's.
    """
    if not tol.elementwise:
        tol = TOLERANCES["fp32"]
    r = np.asarray(rows).astype(np.float64)
    head = r[:1]
    with np.errstate(invalid="ignore", over="ignore"):
        same = (np.isnan(r) & np.isnan(head)) | (~np.isfinite(r) & (r == head))
        both = np.isfinite(r) & np.isfinite(head)
        close = both & (np.abs(np.where(both, r - head, 0.0)) <= tol.abs + tol.rel * np.abs(np.where(both, head, 0.0)))
    return bool((same | close).all())


def _judge_trivial(check: OutputCheck, got, expected, rows: list[int], total: int, tol: Tolerance) -> None:
    """Sets ``check.trivial`` when the reference or the output is the same for every distinct input row."""
    expected = np.asarray(expected)
    if len(rows) < 2 or expected.ndim == 0 or expected.shape[0] != total:
        return  # fewer than two different inputs, or an output whose rows are not the inputs' rows
    check.metrics["distinct_inputs"] = len(rows)
    check.metrics["ref_constant"] = rows_constant(expected[rows], tol)
    same_shape = got is not None and np.shape(got) == expected.shape
    check.metrics["got_constant"] = same_shape and rows_constant(np.asarray(got)[rows], tol)
    if check.metrics["ref_constant"]:
        check.trivial = f"the reference is the same for {len(rows)} different inputs"
    elif check.metrics["got_constant"]:
        check.trivial = f"the output is the same for {len(rows)} different inputs"


def check_outputs(
    got: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    precision: str = "fp32",
    overrides: dict[str, dict[str, float]] | None = None,
    classifier: bool = False,
    inputs: dict[str, np.ndarray] | None = None,
) -> CheckReport:
    """Checks every reference output; a missing output fails.

    Args:
        got: Backend outputs by name.
        reference: Reference outputs by name (saved at export).
        precision: Selects the default tolerances (:data:`TOLERANCES`).
        overrides: Per-output (or ``*``) tolerance fields, see :func:`parse_tolerance_overrides`.
        classifier: Also compute top-1/top-5 agreement.
        inputs: The inputs the outputs came from, rows along the leading axis (see :func:`join_batches`).
            With them, an output whose rows are the same (within its tolerance) for every distinct input row,
            in the reference or from the backend, is flagged ``trivial``: its check cannot discriminate.

    Raises:
        BadInputError: ``overrides`` names an output ``reference`` does not have.
    """
    check_override_outputs(overrides, reference)
    rows = distinct_rows(inputs) if inputs else []
    total = len(next(iter(inputs.values()))) if rows else 0
    results = []
    for name, expected in reference.items():
        tol = tolerance_for(precision, name, overrides)
        if name not in got:
            results.append(OutputCheck(name, False, {}, asdict(tol), [f"missing output (got {', '.join(got)})"],
                                       category=ACCURACY_FAIL))
        else:
            results.append(compare_output(name, got[name], expected, tol, classifier))
        _judge_trivial(results[-1], got.get(name), expected, rows, total, tol)
    return CheckReport(all(r.passed for r in results), results)
