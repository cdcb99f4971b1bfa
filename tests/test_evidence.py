"""Hand-computed checks of fasterseg_core.evidence: intervals, TOST and the verdict rule table.

Expected numbers are literals or closed forms, never scipy. Every case uses n = 3 (df = 2), where the
Student-t distribution has a closed form: F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so
  upper tail  P(T > t) = 1/2 - t / (2 sqrt(2 + t^2)),
  quantile    t_q = a sqrt(2 / (1 - a^2)) with a = 2q - 1, e.g. t(0.975, 2) = 0.95 sqrt(2 / 0.0975).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from fasterseg_core.evidence import (
    RULES,
    Summary,
    Verdict,
    difference_from,
    paired_difference,
    rules_text,
    summarize,
    tost,
    verdict,
    verdict_threshold,
)

# t(0.975, 2) = 0.95 sqrt(2 / 0.0975), checked below. (The value 4.302652729911275 sometimes quoted is off
# from the 11th significant digit; the closed form settles it.)
T975_DF2 = 4.302652729749463
HALF = T975_DF2 / math.sqrt(3)  # CI half-width for sd = 1, n = 3: t * sd / sqrt(n) = 2.48413771...


def df2_upper_tail(t: float) -> float:
    return 0.5 - t / (2 * math.sqrt(2 + t * t))


def test_table_value_matches_df2_closed_form():
    assert T975_DF2 == pytest.approx(0.95 * math.sqrt(2 / (1 - 0.95**2)), rel=1e-12)


def test_summarize_one_two_three():
    s = summarize([1, 2, 3])
    assert (s.n, s.mean, s.sd) == (3, 2.0, 1.0)
    assert s.sem == pytest.approx(1 / math.sqrt(3), rel=1e-12)
    assert s.ci_low == pytest.approx(2 - HALF, rel=1e-12)  # -0.48413771...
    assert s.ci_high == pytest.approx(2 + HALF, rel=1e-12)  # 4.48413771...
    assert s.values == (1.0, 2.0, 3.0)
    assert isinstance(s, Summary)


def test_summarize_other_confidence():
    # t(0.95, 2): a = 0.9, t = 0.9 sqrt(2 / 0.19) = 2.91998558...
    s = summarize([1, 2, 3], confidence=0.90)
    assert s.ci_high - 2 == pytest.approx(0.9 * math.sqrt(2 / 0.19) / math.sqrt(3), rel=1e-12)


def test_summarize_n1_has_no_interval():
    s = summarize([71.3])
    assert s.n == 1 and s.mean == 71.3
    assert all(math.isnan(x) for x in (s.sd, s.sem, s.ci_low, s.ci_high))


def test_summarize_identical_values_collapse():
    # 0.3 three times: np.mean would round off; the exact identity check gives sd = 0 and a point interval.
    s = summarize([0.3, 0.3, 0.3])
    assert (s.mean, s.sd, s.sem, s.ci_low, s.ci_high) == (0.3, 0.0, 0.0, 0.3, 0.3)


@pytest.mark.parametrize("bad", [[1.0, float("nan"), 3.0], [1.0, float("inf")]])
def test_summarize_rejects_missing_seed(bad):
    with pytest.raises(ValueError, match="position"):
        summarize(bad)


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]]])
def test_summarize_rejects_empty_or_2d(bad):
    with pytest.raises(ValueError, match="1-D"):
        summarize(bad)


def test_paired_difference_by_seed():
    # distilled [72.0, 73.5, 71.0] - scratch [70.0, 70.5, 67.0] = [2, 3, 4]: mean 3, sd 1.
    s = paired_difference([72.0, 73.5, 71.0], [70.0, 70.5, 67.0])
    assert s.values == (2.0, 3.0, 4.0)
    assert (s.mean, s.sd) == (3.0, 1.0)
    assert (s.ci_low, s.ci_high) == pytest.approx((3 - HALF, 3 + HALF), rel=1e-12)


def test_paired_difference_length_mismatch_names_both():
    with pytest.raises(ValueError, match=r"len\(a\) = 3, len\(b\) = 2"):
        paired_difference([1, 2, 3], [1, 2])


def test_difference_from_shared_value():
    s = difference_from([72.0, 73.0, 74.0], 71.0)  # [1, 2, 3]
    assert s.mean == 2.0 and s.ci_low == pytest.approx(2 - HALF, rel=1e-12)


def test_tost_symmetric_case():
    # d = [-0.1, 0, 0.1]: mean 0, sem = 0.1/sqrt(3); both one-sided t = 1 / sem = 10 sqrt(3) = 17.3205...
    # p = 1/2 - 10 sqrt(3) / (2 sqrt(302)) = 0.0016583...
    expected = df2_upper_tail(10 * math.sqrt(3))
    assert expected == pytest.approx(0.0016584, abs=1e-7)
    assert tost([-0.1, 0.0, 0.1], margin=1.0) == pytest.approx(expected, rel=1e-9)


def test_tost_is_the_larger_one_sided_p():
    # d = [0.5, 0.6, 0.7]: mean 0.6, sem 0.1/sqrt(3). Upper test t = (0.6 - 1) / sem = -4 sqrt(3),
    # p_upper = P(T < -4 sqrt(3)) = 1/2 - 4 sqrt(3) / (2 sqrt(50)) = 0.0101020...; the lower test
    # (t = 16 sqrt(3)) has a much smaller p, so the TOST p is p_upper.
    expected = df2_upper_tail(4 * math.sqrt(3))
    assert expected == pytest.approx(0.010102, abs=1e-6)
    assert tost([0.5, 0.6, 0.7], margin=1.0) == pytest.approx(expected, rel=1e-9)


def test_tost_degenerate_and_bad_margin():
    assert math.isnan(tost([0.2], 1.0))
    assert math.isnan(tost([0.2, 0.2, 0.2], 1.0))
    with pytest.raises(ValueError, match="margin"):
        tost([1, 2, 3], 0.0)


def test_supported_gain():
    v = verdict([2.0, 3.0, 4.0], "greater")  # CI [0.516, 5.484] > 0
    assert v.label == "supported" and v.claim_holds is True
    assert "+3" in v.reason and "0.5159" in v.reason and "n = 3" in v.reason
    assert v.rule.startswith(RULES["greater"])


def test_paired_summary_accepted():
    s = paired_difference([72.0, 73.5, 71.0], [70.0, 70.5, 67.0])
    assert verdict(s, "greater").label == "supported"


def test_contradicted_gain_and_mirror():
    assert verdict([-4.0, -3.0, -2.0], "greater", margin=1.0).label == "contradicted"
    less = verdict([-4.0, -3.0, -2.0], "less")
    assert less.label == "supported" and RULES["less"] in less.rule


def test_on_par_instead_of_gain():
    # CI [-0.248, 0.248] contains 0; TOST p = 0.00166 < 0.05 within ±1.
    v = verdict([-0.1, 0.0, 0.1], "greater", margin=1.0)
    assert v.label == "on par" and v.claim_holds is False
    assert "not supported" in v.reason and "TOST ±1 p = 0.00166" in v.reason


def test_equivalence_claim():
    assert verdict([-0.1, 0.0, 0.1], "equivalent", margin=1.0).claim_holds is True
    # TOST is checked first: CI [0.35, 0.85] excludes 0 but lies inside ±1 (p = 0.0101), so on par.
    assert verdict([0.5, 0.6, 0.7], "equivalent", margin=1.0).label == "on par"
    # CI [0.52, 5.48] excludes 0 and TOST fails: the claim of equivalence is contradicted.
    v = verdict([2.0, 3.0, 4.0], "equivalent", margin=1.0)
    assert v.label == "contradicted" and v.claim_holds is False


def test_inconclusive_wide_spread():
    # d = [-5, 1, 7]: mean 1, sd 6, CI 1 ± 6 * HALF = [-13.9, 15.9]. With margin 1 the upper one-sided test
    # has t = (1 - 1) / sem = 0, so p_upper = 1/2 and the TOST p is 0.5.
    v = verdict([-5.0, 1.0, 7.0], "greater", margin=1.0)
    assert v.label == "inconclusive" and v.claim_holds is None
    assert "p = 0.5" in v.reason
    assert "no margin" in verdict([-5.0, 1.0, 7.0], "greater").reason


def test_n1_is_never_a_verdict():
    for expect in ("greater", "less", "equivalent"):
        v = verdict([5.0], expect, margin=1.0)
        assert v.label == "inconclusive" and v.reason.startswith("inconclusive (n = 1)")


def test_sd0_is_inconclusive():
    v = verdict([2.0, 2.0, 2.0], "greater", margin=1.0)
    assert v.label == "inconclusive" and "sd = 0" in v.reason and "deterministic" in v.reason


def test_bad_expect_or_missing_margin():
    with pytest.raises(ValueError, match="needs a margin"):
        verdict([1, 2, 3], "equivalent")
    with pytest.raises(ValueError, match="expect"):
        verdict([1, 2, 3], "bigger")  # type: ignore[arg-type]


def test_threshold_latency():
    # latency [20, 21, 22] ms vs 30 ms target: CI 21 ± HALF = [18.52, 23.48] < 30.
    v = verdict_threshold([20.0, 21.0, 22.0], 30.0, "less")
    assert v.label == "supported" and "vs threshold 30" in v.reason and "18.52" in v.reason
    assert verdict_threshold([28.0, 31.0, 34.0], 30.0, "less").label == "inconclusive"


def test_threshold_deterministic():
    v = verdict_threshold([4.41], 4.4, "equivalent", margin=0.05, deterministic=True)
    assert v.label == "on par" and v.claim_holds is True and "does not vary with the seed" in v.reason
    assert verdict_threshold([5.0], 4.4, "equivalent", margin=0.1, deterministic=True).label == "contradicted"
    assert verdict_threshold([5.0, 5.0], 4.4, "greater", deterministic=True).label == "supported"
    with pytest.raises(ValueError, match="differ"):
        verdict_threshold([5.0, 5.1], 4.4, "greater", deterministic=True)


def test_rules_text_covers_every_rule():
    text = rules_text()
    assert all(rule in text for rule in RULES.values())
    assert isinstance(Verdict("inconclusive", "r", "x"), Verdict)


# ---- power -----------------------------------------------------------------------------------------------
def test_power_analysis_matches_the_textbook_and_is_self_consistent():
    from fasterseg_core.evidence import _power_difference, _power_tost, power_analysis

    rng = np.random.default_rng(0)
    values = rng.normal(0.3, 1.0, size=60)
    p = power_analysis(values, margin=1.0)
    sd, n = float(np.std(values, ddof=1)), 60
    # large n: the t-test's detectable difference approaches the normal one, (z_0.975 + z_0.8) · sd / √n
    normal = (stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / np.sqrt(n)
    assert p.detectable == pytest.approx(normal, rel=0.03) and p.detectable > normal
    assert _power_difference(p.detectable, sd, n, 0.05) == pytest.approx(0.8, abs=1e-6)
    # the seed counts are the first n that reach 80 %
    k = p.seeds_for_difference
    assert _power_difference(abs(p.mean), sd, k, 0.05) >= 0.8 > _power_difference(abs(p.mean), sd, k - 1, 0.05)
    k = p.seeds_for_on_par
    assert _power_tost(p.mean, sd, k, 1.0, 0.05) >= 0.8 > _power_tost(p.mean, sd, k - 1, 1.0, 0.05)


def test_power_at_one_degree_of_freedom_is_not_a_nan_in_disguise():
    """Two seeds: scipy's noncentral t returns NaN far in the lower tail, which once read as power 1."""
    from fasterseg_core.evidence import _power_difference, power_analysis

    assert _power_difference(4.15, np.sqrt(0.5), 2, 0.05) == pytest.approx(0.485, abs=0.01)  # Monte Carlo: 0.485
    p = power_analysis([0.0, -1.0], margin=1.0)
    assert p.detectable == pytest.approx(8.17, abs=0.05) and (p.seeds_for_difference, p.seeds_for_on_par) == (18, 14)
    assert p.sentence() == ("n = 2, sd 0.71 points: the smallest difference found with 80 % power is 8.2 points; for "
                            "the observed 0.5, 80 % power needs 18 seeds; 'on par' within ±1 needs 14.")
    assert power_analysis([1.0]) is None and power_analysis([1.0, 1.0]) is None  # no sd to plan with
    assert power_analysis([2.0, 3.0], margin=1.0).seeds_for_on_par is None  # the mean lies outside the margin
