"""The study's rules, each defined once: which runs may be compared, the targets, and how the recipe and the
λ's are chosen on the validation split. Plain values in, plain values out; results.py reads and writes the files.
"""
import math
from dataclasses import asdict, dataclass, fields

from regularizers import VARIANTS

# config keys that say where a run was written or which seeds it holds, not what was computed,
# or how it was evaluated or packed (both change only the last bits of float sums: equally valid runs)
NOT_COMPARED = {"seeds", "device", "data", "out", "name", "eval_batch_size", "packed"}

TIE = 0.05                            # points of mean validation accuracy within which two choices are tied
TARGETS = {"bn": 99.45, "gbn": 99.40}  # the study's aim for the five-seed mean at the final epoch, by norm
AIM = 99.40                           # the seed assignment's 99.4%: what every single seed should reach
BASE = "none"                         # every paired difference is taken against this variant

RECIPE_RULE = ("highest mean final validation accuracy over the seeds (train on the first 50k, evaluate on the "
               f"last 10k training images); candidates within {TIE} points of the best count as tied, and among "
               "tied ones the one listed first wins (the list runs from the fewest changes to the most)")
LAMBDA_RULE = (f"per penalty, the largest lambda whose mean final validation accuracy stays within {TIE} points of "
               "the chosen recipe without penalty (the strongest penalty that costs nothing measurable)")


# -----------------------------------------------------------------------------
# what a reader may conclude from paired differences: families, Holm's correction, an equivalence margin

ALPHA = 0.05    # two-sided, per family, after Holm's correction over the family's contrasts
# accuracy points: where a contrast's 90% interval lies inside ±MARGIN (the two one-sided tests at 5%), the two
# variants are "equal within ±0.1"; 0.1 is one binomial standard error of a 10,000-image accuracy near 99.4%
MARGIN = 0.1


@dataclass(frozen=True)
class Family:
    """A set of contrasts (variant − BASE, at each size where there are sizes) judged together under Holm."""
    what: str
    measure: str                  # "final_test_acc" or "final_test_loss"
    variants: tuple
    sizes: tuple = ()             # the data-size study's training-set sizes; () for one folder of variants
    margin: float = None          # equivalence margin in the measure's units; None: no equivalence is claimed
    better: int = 1               # +1: higher is better (accuracy); -1: lower is (loss)
    pairs: tuple = ()             # (variant, base) contrasts where the base is not always BASE

    def contrasts(self):
        """[(variant, base)] of the family."""
        return list(self.pairs) or [(v, BASE) for v in self.variants]


# fixed before any run they judge is added; the families the confirmatory study uses are in its plan
# (results/confirm/plan.json, written by confirm.py)
FAMILIES = {
    "main": Family("the main study: every other variant minus none, final test accuracy", "final_test_acc",
                   ("l1", "l2", "l1l2", "gbn", "gbn_l1l2"), margin=MARGIN),
    "datasize_acc": Family("the data-size study: l1, l2, l1l2 minus none at 4 sizes, final test accuracy",
                           "final_test_acc", ("l1", "l2", "l1l2"), (1000, 5000, 20000, 60000), margin=MARGIN),
    "datasize_loss": Family("the data-size study: l1, l2, l1l2 minus none at 4 sizes, final test loss",
                            "final_test_loss", ("l1", "l2", "l1l2"), (1000, 5000, 20000, 60000), better=-1),
}


def verdict(reject, side, equivalent, margin, base=BASE):
    """The words a contrast's outcome produces: from Holm's decision first, then the equivalence test."""
    if reject:
        return f"beats {base}" if side > 0 else f"is worse than {base}"
    if equivalent:
        return f"is equal to {base} within ±{margin:g}"
    return f"is not distinguishable from {base}"


# -----------------------------------------------------------------------------
# the confirmatory study (confirm.py): everything it decides by, fixed before its runs and written into
# results/confirm/plan.json, whose commit comes before the first of them

CONFIRM_MARGIN = 0.05     # accuracy points: the size of effect the main question is about
# final test loss: a third of l2's effect at 1,000 images in the data-size study (-0.036; paired SD ~0.012), so
# "equal" means a difference too small to explain that effect
MECHANISM_MARGIN = 0.012
MECHANISM = ("l2", "none_normmatch", "l2_conv9")
CONFIRM_FAMILIES = {
    "confirm_main": Family("60,000 images, 15 epochs: l1, l2, l1l2 minus none, final test accuracy",
                           "final_test_acc", ("l1", "l2", "l1l2"), margin=CONFIRM_MARGIN),
    "confirm_mechanism": Family(
        "1,000 images, 9,375 steps, final test loss: l2 - none (the effect), none_normmatch - l2 and l2_conv9 - "
        "none (zero if the effective step explains it), none_normmatch - none and l2_conv9 - l2 (zero if the "
        "classifier's penalty does)", "final_test_loss", MECHANISM, margin=MECHANISM_MARGIN, better=-1,
        pairs=(("l2", "none"), ("none_normmatch", "l2"), ("l2_conv9", "none"), ("none_normmatch", "none"),
               ("l2_conv9", "l2"))),
    "confirm_mechanism_acc": Family("the same five contrasts in final test accuracy (secondary: reported, decides "
                                    "nothing)", "final_test_acc", MECHANISM, margin=MARGIN,
                                    pairs=(("l2", "none"), ("none_normmatch", "l2"), ("l2_conv9", "none"),
                                           ("none_normmatch", "none"), ("l2_conv9", "l2"))),
}
MECHANISM_DECISION = {
    "not replicated": "l2 does not beat none in loss: there is no effect to explain",
    "the effective learning rate": "l2 beats none, none_normmatch is equal to l2 and l2_conv9 is equal to none",
    "regularization of the classifier": "l2 beats none, none_normmatch is equal to none and l2_conv9 is equal to l2",
    "in between": "anything else: each contrast is reported as measured",
}


def mechanism_decision(verdicts):
    """The plan's words for the mechanism control, from its loss family's verdicts {(variant, base): verdict}."""
    equal = lambda a, b: verdicts.get((a, b), "").startswith("is equal to")
    if not verdicts.get(("l2", "none"), "").startswith("beats"):
        return "not replicated"
    if equal("none_normmatch", "l2") and equal("l2_conv9", "none"):
        return "the effective learning rate"
    if equal("none_normmatch", "none") and equal("l2_conv9", "l2"):
        return "regularization of the classifier"
    return "in between"


# -----------------------------------------------------------------------------
# seeds: a choice is never made on the seeds that test it

# seeds 0-4 served the main study's tests, and 0-2 its recipe and λ choices and the data-size study's: λ was
# chosen on the same subsets and initial weights as 3 of the 5 test seeds (no test image was used)
SEEDS_USED = frozenset(range(5))


def check_seeds(validation, test):
    """ValueError unless the validation seeds and the test seeds of a new study are disjoint, and fresh: none
    of them used by an earlier study (SEEDS_USED)."""
    if set(validation) & set(test):
        raise ValueError(f"validation seeds {sorted(set(validation) & set(test))} are also test seeds")
    if (set(validation) | set(test)) & SEEDS_USED:
        raise ValueError(f"seeds {sorted((set(validation) | set(test)) & SEEDS_USED)} were used by an earlier study")


def experiment():
    """The keys that may differ between two variants being compared: the fields of the variant table's rows, read
    when asked, so that a row with a new knob (docs/adding-a-variant.md) is compared on everything else."""
    return {"variant"} | {f.name for row in VARIANTS.values() for f in fields(row)}


def with_defaults(config):
    """config with Config's default for every key it lacks: a key added after a file was written has, by the rule
    every new field follows, the default that computes what the code computed before it existed."""
    from config import Config  # config -> results -> this module: imported when first needed
    return asdict(Config()) | config


def comparable(config):
    """The part of a config that decides the numbers: two runs with equal parts may share a results file."""
    return {k: v for k, v in with_defaults(config).items() if k not in NOT_COMPARED}


def differences(a, b, ignore=()):
    """'key (a -> b)' for every key where configs a and b differ, outside NOT_COMPARED and ignore."""
    a, b = comparable(a), comparable(b)
    return [f"{k} ({a.get(k)!r} -> {b.get(k)!r})" for k in sorted(set(a) | set(b))
            if k not in ignore and a.get(k) != b.get(k)]


def val_summary(result):
    """The validation accuracies of a --val run's finished seeds, and their mean (None when all diverged)."""
    accs = [r["final_test_acc"] for r in result["runs"] if r["status"] == "ok"]
    return {"seeds": [r["seed"] for r in result["runs"]], "val_acc": accs,
            "val_acc_mean": math.fsum(accs) / len(accs) if accs else None}


# -----------------------------------------------------------------------------
# the recipe and the λ's: every input is checked before anything is chosen

def check_validation_runs(runs, reference=None, ignore=()):
    """runs: {path: result}. Each must be a --val run with the same epochs and seeds as the first (or as
    `reference`, a config), and, with `reference`, computed the same way apart from `ignore`. ValueError names
    the file and what is wrong."""
    first = reference or next(iter(runs.values()))["config"]
    for path, r in runs.items():
        cfg = r["config"]
        if not cfg.get("val"):
            raise ValueError(f"{path} is not a validation run (--val): its accuracies are test accuracies, and the "
                             f"test set must stay untouched until the study")
        for key in ("epochs", "seeds"):
            if cfg[key] != first[key]:
                raise ValueError(f"{path} has {key} {cfg[key]}, the others {first[key]}: choices are made on equal terms")
        diff = differences(first, cfg, ignore=ignore) if reference else []
        if diff:
            raise ValueError(f"{path} was trained under another recipe ({', '.join(diff)}); re-run it under the "
                             f"chosen one")


def check_recipe(r):
    """ValueError unless recipe.json's content r has what recipe_choice writes and report.py shows."""
    entries = lambda xs, keys: isinstance(xs, list) and all(isinstance(x, dict) and keys <= set(x) for x in xs)
    points = {"seeds", "val_acc", "val_acc_mean"}
    if "rule" not in r or not entries(r["candidates"], points | {"name", "config"}) or \
            (r.get("lambdas") and not (isinstance(r["lambdas"], dict) and "lambda_rule" in r
                                       and entries(r.get("lambda_points"), points | {"penalty", "lambda"}))):
        raise ValueError("a rule, a candidate or a λ point lacks what `make recipe` writes")


def recipe_choice(candidates, lambda_runs):
    """recipe.json's content from the candidate runs [(name, path, result)], listed from the fewest changes to the
    most, and the λ runs {path: result}: RECIPE_RULE and LAMBDA_RULE applied."""
    check_validation_runs({path: r for _, path, r in candidates})
    summaries = [(name, val_summary(r)) for name, _, r in candidates]
    means = {name: s["val_acc_mean"] for name, s in summaries if s["val_acc_mean"] is not None}
    if not means:
        raise ValueError(f"every seed of every recipe candidate diverged ({', '.join(p for _, p, _ in candidates)}): "
                         f"nothing to choose")
    chosen = next(name for name, mean in means.items() if mean >= max(means.values()) - TIE)  # the first tied
    out = {"rule": RECIPE_RULE, "candidates": [{"name": name, "config": r["config"]} | s
                                               for (name, _, r), (_, s) in zip(candidates, summaries)],
           "chosen": chosen, "lambdas": None, "lambda_rule": LAMBDA_RULE}
    if lambda_runs:
        chosen_cfg = next(r["config"] for name, _, r in candidates if name == chosen)
        check_validation_runs(lambda_runs, reference=chosen_cfg, ignore=experiment())
        reference = dict(summaries)[chosen]["val_acc_mean"]
        out["lambda_points"], out["lambdas"] = [], {}
        for key in ("l1", "l2"):
            pts = sorted(((r["config"][key], val_summary(r)) for r in lambda_runs.values() if r["variant"] == key),
                         key=lambda p: p[0])
            out["lambda_points"] += [{"penalty": key, "lambda": lam} | s for lam, s in pts]
            passed = [lam for lam, s in pts if s["val_acc_mean"] is not None and s["val_acc_mean"] >= reference - TIE]
            out["lambdas"][key] = max(passed, default=None)
    return out


# -----------------------------------------------------------------------------
# the data-size study (datasize.py): λ per training-set size, chosen on the validation split

DATASIZE_RULE = (f"per penalty, the λ with the highest mean final validation accuracy over the seeds; λ's within "
                 f"{TIE} points of it count as tied, and the smallest of them wins")


def datasize_choice(runs, grid):
    """One size's entry of choice.json from its validation runs {path: result}: `none` (the reference) first,
    then one run per λ of the grid. Every input is checked before anything is chosen."""
    (_, reference), points = next(iter(runs.items())), []
    check_validation_runs(runs, reference=reference["config"], ignore=experiment())
    for r in list(runs.values())[1:]:
        key = r["variant"]
        losses = [run["epochs"][-1]["test_loss"] for run in r["runs"] if run["status"] == "ok"]
        points.append({"penalty": key, "lambda": r["config"][key]} | val_summary(r) |
                      {"val_loss": losses, "val_loss_mean": math.fsum(losses) / len(losses) if losses else None})
    chosen = {}
    for key, lams in grid.items():
        pts = [p for p in points if p["penalty"] == key and p["val_acc_mean"] is not None]
        if sorted(p["lambda"] for p in points if p["penalty"] == key) != sorted(lams):
            raise ValueError(f"the {key} runs ({sorted(p['lambda'] for p in points if p['penalty'] == key)}) are not "
                             f"the grid {lams}")
        if not pts:
            raise ValueError(f"every {key} run diverged: nothing to choose")
        best = max(p["val_acc_mean"] for p in pts)
        chosen[key] = min(p["lambda"] for p in pts if p["val_acc_mean"] >= best - TIE)
    cfg = reference["config"]
    return {"rule": DATASIZE_RULE, "grid": grid, "train_subset": cfg["train_subset"], "steps": cfg["steps"],
            "epochs": cfg["epochs"], "reference": {"variant": "none"} | val_summary(reference), "points": points,
            "chosen": chosen}
