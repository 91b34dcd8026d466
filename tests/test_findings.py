"""The findings: exact t quantiles, Holm's correction per family, equivalence within a margin, the verdict words,
the effective step, the README's generated blocks (a hand edit of a README number fails here) and epochs.csv."""
import csv
import dataclasses
import io
import os

import numpy as np
import pytest
import scipy.stats

import config
import findings
import report
import results
import rules
import stats
from conftest import ROOT, make_result

RESULTS = os.path.join(ROOT, "results")


# -----------------------------------------------------------------------------
# the statistics

def test_holm_adjusts_step_down_by_hand():
    """p = 0.01, 0.04, 0.03 over 3 contrasts: sorted 0.01·3 = 0.03, 0.03·2 = 0.06, max(0.06, 0.04·1) = 0.06."""
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_p_value_is_the_paired_t_test():
    """p equals scipy's one-sample t-test on the differences; a single pair has none."""
    d = [0.1, 0.0, 0.2, 0.15]
    assert stats.p_value(d) == pytest.approx(scipy.stats.ttest_1samp(d, 0).pvalue)
    assert stats.p_value([0.3]) is None


def test_the_interval_uses_the_exact_t_quantile():
    """n1000's l1 accuracy interval ends at +0.285, which prints +0.29; the old table's 2.776 printed +0.28."""
    row = next(r for r in stats.datasize_rows(results.load_datasize(RESULTS)) if (r["size"], r["variant"]) == (1000, "l1"))
    assert f"{row['acc_hi']:+.2f}" == "+0.29", row["acc_hi"]
    d = np.array([0.3, -0.1, 0.2, 0.0, 0.1, 0.25, -0.05] * 5)  # 35 pairs: no normal 1.96 above 30 either
    half = stats.interval(d)[2] - d.mean()
    assert half == pytest.approx(scipy.stats.t.ppf(0.975, 34) * d.std(ddof=1) / np.sqrt(35), rel=1e-12)


def test_equivalence_needs_the_whole_90_interval_inside_the_margin():
    """Mean 0.02 with a narrow spread around it is equal within ±0.1; with a wide one it is not distinguishable."""
    narrow = stats.family({"a": [0.03, -0.01, 0.04, 0.01, 0.03]}, margin=0.1)["a"]
    wide = stats.family({"a": [0.2, -0.15, 0.1, -0.1, 0.05]}, margin=0.1)["a"]
    assert narrow["equivalent"] and -0.1 < narrow["lo90"] and narrow["hi90"] < 0.1
    assert narrow["verdict"] == "is equal to none within ±0.1", narrow
    assert not wide["equivalent"] and wide["verdict"] == "is not distinguishable from none", wide


def test_verdicts_follow_holm_not_the_raw_interval():
    """Three contrasts whose raw intervals exclude 0 at p = 0.007, 0.029, 0.029 among 12: after Holm none survives;
    alone in a family of one, the first beats none."""
    rows = stats.datasize_rows(results.load_datasize(RESULTS))
    gains = [r for r in rows if r["acc_lo"] is not None and r["acc_lo"] > 0]
    assert sorted(round(r["acc_p"], 3) for r in gains) == [0.007, 0.029, 0.029], gains
    assert all(r["acc_verdict"] == "is not distinguishable from none" for r in gains)
    best = min(gains, key=lambda r: r["acc_p"])
    one = stats.family({"x": stats.paired(results.load_datasize(RESULTS)[best["size"]][best["variant"]],
                                          results.load_datasize(RESULTS)[best["size"]]["none"])[1]}, rules.MARGIN)
    assert one["x"]["verdict"] == "beats none"


def test_the_loss_family_reads_lower_as_better():
    """At 1,000 images l2 and l1l2 lower the loss and beat none after Holm; l1's higher loss at 5,000 is worse."""
    rows = {(r["size"], r["variant"]): r for r in stats.datasize_rows(results.load_datasize(RESULTS))}
    assert rows[1000, "l2"]["loss_verdict"] == rows[1000, "l1l2"]["loss_verdict"] == "beats none"
    assert rows[5000, "l1"]["loss_verdict"] == "is worse than none"


def test_new_studies_choose_and_test_on_disjoint_fresh_seeds():
    """Validation seeds that are also test seeds, or seeds an earlier study used, are refused by name."""
    rules.check_seeds(range(200, 203), range(100, 120))
    with pytest.raises(ValueError, match=r"\[100\] are also test seeds"):
        rules.check_seeds([100, 200], range(100, 120))
    with pytest.raises(ValueError, match=r"seeds \[0, 1\] were used by an earlier study"):
        rules.check_seeds([0, 1], range(100, 120))


def test_step_ratio_by_hand(tmp_path, mnist):
    """lr / Σ₁₋₈ ‖w‖² of a run whose norms are half of another's is 4x the other's, epoch by epoch."""
    a = make_result(tmp_path, "none", {0: 99.40}, mnist)
    b = {**a, "runs": [{**run, "epochs": [{**e, "weight_norm": {k: v / 2 for k, v in e["weight_norm"].items()}}
                                          for e in run["epochs"]]} for run in a["runs"]]}
    assert stats.step_ratio(b, a) == pytest.approx([4.0] * 3)


# -----------------------------------------------------------------------------
# the README and epochs.csv

def committed_blocks():
    return findings.blocks(*report.studies(RESULTS))


def test_the_readme_states_what_the_committed_results_give():
    """Every generated block of README.md equals what report.py computes from the committed JSON: `make plots`
    after a hand edit of a README number (or a changed result) shows up here as a difference."""
    text = open(os.path.join(ROOT, "README.md")).read()
    assert findings.fill(text, committed_blocks()) == text, "README.md differs from the results: run `make plots`"


def test_protocol_md_takes_the_recipe_from_the_config(monkeypatch):
    """docs/protocol.md's recipe block is the one the README shows, from Config's defaults: a changed default
    (here the learning-rate peak) makes the committed text differ until `make plots` writes it again."""
    text = open(os.path.join(ROOT, "docs", "protocol.md")).read()
    assert findings.fill(text, committed_blocks(), every=False) == text, "protocol.md differs: run `make plots`"
    monkeypatch.setattr(findings, "Config", lambda: dataclasses.replace(config.Config(), lr=0.2))
    assert "peaking at 0.2" in findings.fill(text, committed_blocks(), every=False)


def test_a_hand_edited_readme_number_is_caught():
    """Changing one printed number inside a block makes the README differ from what the results give."""
    text = open(os.path.join(ROOT, "README.md")).read()
    edited = text.replace("| none | 0 | 0 | 99.45 ± 0.03 |", "| none | 0 | 0 | 99.46 ± 0.03 |")
    assert edited != text
    assert findings.fill(edited, committed_blocks()) != edited


def test_a_missing_marker_is_refused():
    """A README without one of the blocks' markers is refused with the names of both sides."""
    with pytest.raises(results.ResultsError, match=r"markers \[\] are not the generated blocks \['answer'\]"):
        findings.fill("no markers here\n", {"answer": "x\n"})


def test_epochs_csv_holds_every_epoch_as_the_json_does(two_variants):
    """One row per (variant, seed, epoch), each value as the JSON holds it."""
    found = results.load_folder(two_variants)
    rows = list(csv.DictReader(io.StringIO(report.epochs_csv(found, {}).decode())))
    assert len(rows) == sum(len(run["epochs"]) for r in found.values() for run in r["runs"]) == 12
    e = found["l1"]["runs"][1]["epochs"][2]
    row = next(r for r in rows if (r["variant"], r["seed"], r["epoch"]) == ("l1", "1", "3"))
    assert float(row["test_acc"]) == e["test_acc"] and float(row["norm_conv9"]) == e["weight_norm"]["conv9"]
    assert (row["study"], row["split"], row["l1"], row["size"]) == ("main", "test", "1e-05", "60000"), row


def test_the_mechanism_shares_follow_the_contrasts():
    """Each arm's share is its difference from none over l2's; shares that add past 100% are said to seem to
    overlap, below it their sum is given, the larger share is named as a point estimate, and without an l2 effect
    (in loss) or an l2 difference (in accuracy) no share is computed."""
    def family(step, head, beats=True, l2=-0.04):
        c = lambda mean, verdict, reject=True: {"mean": mean, "verdict": verdict, "reject": reject}
        return {("l2", "none"): c(l2, "beats none" if l2 else "is equal to none within ±0.012", bool(l2)),
                ("none_normmatch", "none"): c(step, "beats none" if beats else "is not distinguishable from none",
                                              beats), ("l2_conv9", "none"): c(head, "beats none")}
    acc = family(0.2, 0.1) | {("l2", "none"): {"mean": 0.4, "verdict": "beats none", "reject": True}}
    found = {"none": {"config": {"train_subset": 1000}}}
    said = findings.mechanism_shares({"contrasts": family(-0.03, -0.02), "secondary": acc, "found": found})
    assert "recovers 75% of" in said and "classifier alone) 50%" in said and "seem to overlap" in said, said
    assert "shares are 50% and 25%" in said and "at 1,000 images" in said and "share: the effective step)" in said
    said = findings.mechanism_shares({"contrasts": family(-0.01, -0.02), "secondary": acc, "found": found})
    assert "together 75%" in said and "share: the classifier)" in said, said
    said = findings.mechanism_shares({"contrasts": family(-0.01, -0.02, beats=False), "secondary": acc, "found": found})
    assert "acts through both" not in said, said
    flat = acc | {("l2", "none"): {"mean": 0.0, "verdict": "is equal to none within ±0.1", "reject": False}}
    said = findings.mechanism_shares({"contrasts": family(-0.01, -0.02), "secondary": flat, "found": found})
    assert "`l2` and `none` do not differ on average" in said, said
    said = findings.mechanism_shares({"contrasts": family(-0.01, -0.02, l2=0.0), "secondary": acc, "found": found})
    assert said == "- **No route to measure:** `l2` is equal to none within ±0.012 in loss.", said
