"""Intervals, paired differences and verdicts for the multi-seed study of FasterSeg's claims.

Every network of the reproduction (Chen et al., ICLR 2020, Tables 1–6) is trained with a few seeds, and
each published claim gets one of four labels: "supported", "contradicted", "on par" or "inconclusive".
This module is the one place those labels are decided; the report quotes :func:`rules_text` verbatim.

*Why Student-t.* With n = 3 seeds the sample sd is itself very uncertain. The t-interval with n − 1
degrees of freedom widens for it (t(0.975, 2) = 4.30 against z = 1.96); a normal interval would claim
more than three seeds can show.

*Why TOST for "on par".* An interval that contains 0 only says "no difference detected", which with few
seeds is the expected outcome even when a real gap exists. Equivalence has to be shown against a margin
fixed beforehand (e.g. ±1 mIoU point) by two one-sided t-tests (Schuirmann 1987): both "mean > −m" and
"mean < +m" must reject, so the TOST p-value is the larger of the two one-sided p-values.

Rules (d = claim − reference per seed; CI = Student-t interval of mean d at ``confidence``; alpha =
1 − confidence; TOST only with a stated margin m; the first matching check wins):

================  ======================================================================================
expect            checks in order → label
================  ======================================================================================
``"greater"``     CI wholly > 0 → supported; CI wholly < 0 → contradicted; TOST p < alpha → on par (the
                  claimed gain is not supported, ``claim_holds`` is False); otherwise inconclusive
``"less"``        mirror image: CI < 0 → supported; CI > 0 → contradicted; TOST → on par; else inconclusive
``"equivalent"``  TOST p < alpha → on par (the claim holds); CI excludes 0 → contradicted; else inconclusive
================  ======================================================================================

Degenerate cases: n = 1 → "inconclusive (n = 1)". n ≥ 2 with identical values (sd = 0) → inconclusive:
the t statistic is undefined, and identical values across seeds mean either a quantity that does not
depend on the seed (use ``verdict_threshold(..., deterministic=True)``) or seeds that were not varied.
NaN or infinite inputs raise ``ValueError``: a missing seed must be visible, never silently dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, stats

Expect = Literal["greater", "less", "equivalent"]

RULES: dict[str, str] = {
    "greater": 'A claim that the quantity is greater (d = claim − reference per seed) is supported when the '
    'whole Student-t confidence interval of the mean of d lies above 0 and contradicted when it lies below '
    '0; otherwise it is "on par" when a margin m was fixed and TOST (two one-sided t-tests) puts the mean '
    'inside (−m, +m) at alpha = 1 − confidence, which means the claimed gain is not supported; otherwise '
    'it is inconclusive.',
    "less": 'A claim that the quantity is less follows the mirror-image rule.',
    "equivalent": 'A claim of equivalence needs a margin m: it is "on par", i.e. the claim holds, when '
    'TOST rejects non-equivalence (p < alpha); otherwise it is contradicted when the interval excludes 0, '
    'and inconclusive when it does not.',
    "degenerate": 'One seed, or identical values across seeds (sd = 0, no t statistic), gives '
    '"inconclusive"; a missing (NaN) value is an error, never silently dropped.',
    "threshold": 'Claims against a fixed number apply the same rules to value − threshold; quantities that '
    'do not vary with the seed (parameter count, FLOPs) are compared exactly, |value − threshold| ≤ m '
    'counting as on par.',
}


def rules_text() -> str:
    """All verdict rules as one paragraph, for the report's methodology section."""
    return " ".join(RULES.values())


@dataclass(frozen=True)
class Summary:
    """Mean and Student-t interval of per-seed values; sd, sem and the interval are NaN for n = 1."""

    n: int
    mean: float
    sd: float  # sample sd, ddof = 1
    sem: float
    ci_low: float
    ci_high: float
    values: tuple[float, ...]
    confidence: float = 0.95


@dataclass(frozen=True)
class Verdict:
    """A label, one sentence naming the numbers behind it, and the text of the rule that was applied."""

    label: Literal["supported", "contradicted", "on par", "inconclusive"]
    reason: str
    rule: str
    expect: str = ""

    @property
    def claim_holds(self) -> bool | None:
        """True/False when the label settles the claim, None when inconclusive.

        "on par" settles an equivalence claim as true but a claimed gain or reduction as false: the
        difference is shown to be smaller than the margin.
        """
        if self.label == "inconclusive":
            return None
        if self.label == "on par":
            return self.expect == "equivalent"
        return self.label == "supported"


def _as_values(values: ArrayLike, name: str = "values") -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence of per-seed values, got shape {arr.shape}")
    bad = np.flatnonzero(~np.isfinite(arr)).tolist()
    if bad:
        raise ValueError(f"{name} has NaN/inf at positions {bad} of {arr.tolist()}: fill in or remove the "
                         "missing seed explicitly rather than letting it be dropped")
    return arr


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def summarize(values: ArrayLike, confidence: float = 0.95) -> Summary:
    """Mean, sample sd, sem and Student-t interval of per-seed values.

    Args:
        values: one finite value per seed, shape (n,). NaN/inf raise ``ValueError``.
        confidence: coverage of the two-sided interval.

    Returns:
        A :class:`Summary`. For n = 1, sd, sem and the interval are NaN. For n ≥ 2 identical values,
        sd = sem = 0 and the interval collapses to (mean, mean), its limit as sd → 0 (scipy gives NaN).
    """
    _check_confidence(confidence)
    arr = _as_values(values)
    n = int(arr.size)
    if n == 1:
        sd = sem = lo = hi = math.nan
        mean = float(arr[0])
    elif np.all(arr == arr[0]):
        # Exact test, not sd == 0: np.mean of identical floats can round off and leave sd ~ 1e-17.
        mean, sd, sem, lo, hi = float(arr[0]), 0.0, 0.0, float(arr[0]), float(arr[0])
    else:
        mean, sd, sem = float(np.mean(arr)), float(np.std(arr, ddof=1)), float(stats.sem(arr, ddof=1))
        lo, hi = (float(x) for x in stats.t.interval(confidence, n - 1, loc=mean, scale=sem))
    return Summary(n, mean, sd, sem, lo, hi, tuple(float(x) for x in arr), confidence)


def interval(values: ArrayLike, confidence: float = 0.95) -> tuple[float, float]:
    """The Student-t interval of the mean as ``(low, high)``; a single value gives ``(value, value)`` (no
    interval can be drawn). The ``errorbar`` callable for seaborn's plots of seed spread."""
    s = summarize(values, confidence)
    return (s.mean, s.mean) if s.n < 2 else (s.ci_low, s.ci_high)


def paired_difference(a: ArrayLike, b: ArrayLike, confidence: float = 0.95) -> Summary:
    """Summary of a_s − b_s, paired by seed s (same seed → same data order and initialisation).

    Args:
        a: claim values per seed, shape (n,), e.g. distilled-student test mIoU.
        b: reference values for the same seeds in the same order, shape (n,).
        confidence: coverage of the interval.

    Raises:
        ValueError: if the lengths differ (the message names both) or a value is NaN/inf.
    """
    arr_a, arr_b = _as_values(a, "a"), _as_values(b, "b")
    if arr_a.size != arr_b.size:
        raise ValueError(f"paired_difference needs one value per seed in both: len(a) = {arr_a.size}, "
                         f"len(b) = {arr_b.size}")
    return summarize(arr_a - arr_b, confidence)


def difference_from(a: ArrayLike, value: float, confidence: float = 0.95) -> Summary:
    """Summary of a_s − value for one reference shared by all seeds (e.g. a single teacher).

    The shared value is treated as exact: its own seed-to-seed variance is ignored, so the interval is
    too narrow by that amount. Train the reference with several seeds and use :func:`paired_difference`
    when that variance matters.
    """
    if not math.isfinite(value):
        raise ValueError(f"reference value must be finite, got {value}")
    return summarize(_as_values(a, "a") - value, confidence)


def tost(diffs: Summary | ArrayLike, margin: float) -> float:
    """TOST p-value that the mean of ``diffs`` lies inside (−margin, +margin).

    Args:
        diffs: per-seed differences, shape (n,), or their :class:`Summary`.
        margin: equivalence margin (> 0), in the units of ``diffs``.

    Returns:
        max of the one-sided p-values of H1: mean > −margin and H1: mean < +margin (``ttest_1samp``);
        equivalence is shown at level alpha when it is < alpha. NaN for n = 1 or sd = 0, where the t
        statistic does not exist.
    """
    if not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    arr = _as_values(diffs.values if isinstance(diffs, Summary) else diffs, "diffs")
    if arr.size < 2 or np.all(arr == arr[0]):
        return math.nan
    p_low = stats.ttest_1samp(arr, -margin, alternative="greater").pvalue
    p_high = stats.ttest_1samp(arr, margin, alternative="less").pvalue
    return float(max(p_low, p_high))


def _label(expect: str, above: bool, below: bool, equiv: bool, margin: float | None,
           thing: str = "the interval", ref: str = "0") -> tuple[str, str]:
    """The rule table of the module docstring, as code: (label, why) from the three facts."""
    exact = thing != "the interval"  # a deterministic value: wording only, the rules are the same
    if expect in ("greater", "less"):  # "less" is "greater" mirrored
        claimed, other = (above, below) if expect == "greater" else (below, above)
        side = {True: "above", False: "below"}
        if claimed or other:
            label = "supported" if claimed else "contradicted"
            return label, f"{thing} lies {side[above]} {ref}"
        if equiv:
            change = "gain" if expect == "greater" else "reduction"
            return "on par", f"equivalent within the margin, so the claimed {change} is not supported"
    else:
        if equiv:
            return "on par", "equivalent within the margin, so the claim of equivalence holds"
        if above or below:
            return "contradicted", (f"{thing} {'differs from' if exact else 'excludes'} {ref}, so the claim "
                                    "of equivalence is contradicted")
    return "inconclusive", (f"{thing} {'equals' if exact else 'contains'} {ref} and "
                            + ("no margin was set" if margin is None else "equivalence is not shown"))


def _check_expect(expect: str, margin: float | None) -> None:
    if expect not in ("greater", "less", "equivalent"):
        raise ValueError(f'expect must be "greater", "less" or "equivalent", got {expect!r}')
    if expect == "equivalent" and margin is None:
        raise ValueError('expect="equivalent" needs a margin: "on par" is only decided against a stated one')
    if margin is not None and not margin > 0:
        raise ValueError(f"margin must be > 0, got {margin}")


def _decide(s: Summary, expect: str, margin: float | None, threshold: float | None) -> Verdict:
    rule = RULES[expect] if expect != "less" else RULES["greater"] + " " + RULES["less"]
    rule += " " + RULES["degenerate"] + (" " + RULES["threshold"] if threshold is not None else "")
    shift = 0.0 if threshold is None else threshold
    subject = "mean difference" if threshold is None else "mean"
    if s.n == 1:
        return Verdict("inconclusive", f"inconclusive (n = 1): a single seed ({subject} {s.mean + shift:.4g}) "
                       "gives no interval.", rule, expect)
    if s.sd == 0.0:
        return Verdict("inconclusive", f"inconclusive (sd = 0): all {s.n} seeds give {s.mean + shift:.4g}, so "
                       "no t-interval or test exists; for a quantity that does not vary with the seed use "
                       "verdict_threshold(..., deterministic=True).", rule, expect)
    p = tost(s, margin) if margin is not None else math.nan
    equiv = margin is not None and p < 1.0 - s.confidence
    ref = "0" if threshold is None else "the threshold"
    label, why = _label(expect, s.ci_low > 0, s.ci_high < 0, equiv, margin, ref=ref)
    vs = "" if threshold is None else f" vs threshold {threshold:g}"
    sign = "+" if threshold is None else ""
    tost_part = "" if margin is None else f", TOST ±{margin:g} p = {p:.3g}"
    reason = (f"{subject} {s.mean + shift:{sign}.4g} ({100 * s.confidence:g}% CI [{s.ci_low + shift:.4g}, "
              f"{s.ci_high + shift:.4g}], n = {s.n}{tost_part}){vs}: {label}, {why}.")
    return Verdict(label, reason, rule, expect)  # type: ignore[arg-type]


def verdict(diffs: Summary | ArrayLike, expect: Expect, margin: float | None = None,
            confidence: float = 0.95) -> Verdict:
    """Label a claim about per-seed differences d = claim − reference by the module's rule table.

    Args:
        diffs: per-seed differences, shape (n,), or a :class:`Summary` (e.g. from :func:`paired_difference`;
            it is re-summarised at ``confidence``).
        expect: what the claim asserts about d: "greater", "less" or "equivalent".
        margin: equivalence margin for TOST, in the units of d; required for "equivalent".
        confidence: interval coverage; TOST runs at alpha = 1 − confidence.

    Returns:
        A :class:`Verdict`; n = 1 or sd = 0 always gives "inconclusive".
    """
    _check_expect(expect, margin)
    s = summarize(diffs.values if isinstance(diffs, Summary) else diffs, confidence)
    return _decide(s, expect, margin, None)


def verdict_threshold(values: ArrayLike, threshold: float, expect: Expect, margin: float | None = None,
                      confidence: float = 0.95, deterministic: bool = False) -> Verdict:
    """Label a claim about values against a fixed number, e.g. latency < target ms or params ≈ 4.4 M.

    Args:
        values: per-seed values, shape (n,).
        threshold: the published or target number, in the units of ``values``.
        expect: "greater" / "less" (value above / below threshold) or "equivalent" (within ±margin).
        margin: tolerance around the threshold; required for "equivalent".
        confidence: interval coverage (ignored when ``deterministic``).
        deterministic: the quantity does not vary with the seed (params, FLOPs): all values must be equal,
            and the single value is compared exactly, |value − threshold| ≤ margin counting as on par.

    Raises:
        ValueError: if ``deterministic`` and the values differ across seeds.
    """
    _check_expect(expect, margin)
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    arr = _as_values(values)
    if not deterministic:
        return _decide(summarize(arr - threshold, confidence), expect, margin, threshold)
    if not np.all(arr == arr[0]):
        raise ValueError(f"deterministic=True but the values differ across seeds: {arr.tolist()}")
    v = float(arr[0])
    d = v - threshold
    equiv = margin is not None and abs(d) <= margin
    label, why = _label(expect, d > 0, d < 0, equiv, margin, thing="the value", ref="the threshold")
    tol = "" if margin is None else f", |value − threshold| = {abs(d):.4g} {'≤' if equiv else '>'} {margin:g}"
    reason = (f"value {v:.4g} vs threshold {threshold:g} (exact: the quantity does not vary with the seed, "
              f"n = {arr.size}{tol}): {label}, {why}.")
    rule = RULES[expect] + " " + RULES["threshold"]
    return Verdict(label, reason, rule, expect)  # type: ignore[arg-type]


# ---- power: what n seeds can show ---------------------------------------------------------------------
@dataclass(frozen=True)
class Power:
    """What a paired comparison of ``n`` seeds can show, from the observed sd (two-sided t-test at alpha =
    1 − confidence for a difference; TOST at alpha for "on par"; noncentral t, no normal approximation).

    Attributes:
        detectable: the smallest true mean difference detected with probability ``power`` at this n.
        seeds_for_difference: seeds needed to detect a true difference of the observed mean's size (None:
            more than the search limit, e.g. a mean near 0).
        seeds_for_on_par: seeds needed for TOST to show |d| < margin if the true difference is the observed
            mean (None: no margin, |mean| ≥ margin, or more than the search limit).
    """

    n: int
    sd: float
    mean: float
    detectable: float
    seeds_for_difference: int | None
    seeds_for_on_par: int | None
    margin: float | None
    power: float = 0.8

    def sentence(self, unit: str = "points", max_seeds: int = 200) -> str:
        """One sentence for the ledger: the detectable difference at this n and the seeds 80 % power needs."""
        pct = f"{100 * self.power:g} %"
        out = (f"n = {self.n}, sd {self.sd:.2f} {unit}: the smallest difference found with {pct} power is "
               f"{self.detectable:.1f} {unit}")
        if self.mean:
            seeds = self.seeds_for_difference
            out += (f"; for the observed {abs(self.mean):.1f}, {pct} power needs "
                    + (f"{seeds} seeds" if seeds is not None else f"more than {max_seeds} seeds"))
        if self.seeds_for_on_par is not None:
            out += f"; 'on par' within ±{self.margin:g} needs {self.seeds_for_on_par}"
        elif self.margin is not None and abs(self.mean) >= self.margin:
            out += f"; 'on par' within ±{self.margin:g} is out of reach (the mean lies outside the margin)"
        return out + "."


def _above(t: float, df: int, ncp: float) -> float:
    """P(T > t) for T noncentral t(df, ncp); scipy gives NaN far in a tail, where the answer is 0 or 1."""
    p = float(stats.nct.sf(t, df, ncp))
    return (1.0 if ncp > t else 0.0) if math.isnan(p) else p


def _below(t: float, df: int, ncp: float) -> float:
    """P(T < t) for T noncentral t(df, ncp), as :func:`_above`."""
    p = float(stats.nct.cdf(t, df, ncp))
    return (1.0 if ncp < t else 0.0) if math.isnan(p) else p


def _power_difference(delta: float, sd: float, n: int, alpha: float) -> float:
    """Power of the two-sided one-sample t-test of n paired differences against 0 when the true mean is delta."""
    df, ncp = n - 1, delta / (sd / math.sqrt(n))
    t = float(stats.t.ppf(1 - alpha / 2, df))
    return _above(t, df, ncp) + _below(-t, df, ncp)


def _power_tost(delta: float, sd: float, n: int, margin: float, alpha: float) -> float:
    """Power of TOST (±margin, level alpha) for n paired differences whose true mean is delta."""
    df, se = n - 1, sd / math.sqrt(n)
    t = float(stats.t.ppf(1 - alpha, df))
    return max(0.0, _above(t, df, (delta + margin) / se) + _below(-t, df, (delta - margin) / se) - 1)


def power_analysis(values: ArrayLike, margin: float | None = None, confidence: float = 0.95, power: float = 0.8,
                   max_seeds: int = 200) -> Power | None:
    """The detectable difference at this n and the seeds a decisive verdict needs, from per-seed differences.

    Args:
        values: per-seed differences d, shape (n,).
        margin: the "on par" margin (TOST), or None.
        confidence: alpha = 1 − confidence, as the verdicts use it.
        power: the wanted probability of a decisive result.
        max_seeds: the search limit for the seed counts.

    Returns:
        A :class:`Power`, or None for n < 2 or sd = 0 (no sd to plan with).
    """
    s = summarize(values, confidence)
    if s.n < 2 or s.sd == 0.0:
        return None
    alpha = 1.0 - confidence
    detectable = float(optimize.brentq(lambda d: _power_difference(d, s.sd, s.n, alpha) - power,
                                       1e-9 * s.sd, 60.0 * s.sd))

    def first(test: Any) -> int | None:
        return next((n for n in range(2, max_seeds + 1) if test(n) >= power), None)

    for_difference = first(lambda n: _power_difference(abs(s.mean), s.sd, n, alpha)) if s.mean else None
    for_on_par = None
    if margin is not None and abs(s.mean) < margin:
        for_on_par = first(lambda n: _power_tost(s.mean, s.sd, n, margin, alpha))
    return Power(s.n, s.sd, s.mean, detectable, for_difference, for_on_par, margin, power)
