"""confirm.py: the plan comes from rules.py and the committed choice, is never rewritten, must be committed before
a run starts, and fixes every argument of every pack; the mechanism decision follows the plan's words."""
import json
import os
import random
import shutil
import subprocess

import pytest

import confirm
import datasize
import findings
import plot
import results
import rules
from conftest import ROOT


@pytest.fixture
def folder(tmp_path):
    """A results folder with the committed data-size choice (the plan takes λ2 at 1,000 images from it)."""
    os.makedirs(tmp_path / "datasize")
    shutil.copy(os.path.join(ROOT, "results", "datasize", "choice.json"), tmp_path / "datasize")
    return tmp_path


def test_the_plan_fixes_arms_seeds_and_families(folder):
    """Fresh seeds disjoint between the studies, λ's from the variant table and choice.json, the families of
    rules.py with their margins."""
    p = confirm.plan(str(folder))
    assert p["main"]["seeds"] == list(range(100, 120)) and p["mechanism"]["seeds"] == list(range(200, 210))
    assert (p["main"]["l1"], p["main"]["l2"], p["mechanism"]["l2"]) == (3e-5, 3e-4, 1e-3)
    assert p["main"]["family"]["margin"] == 0.05 and p["main"]["family"]["contrasts"] == [
        ("l1", "none"), ("l2", "none"), ("l1l2", "none")]
    assert p["mechanism"]["primary"]["measure"] == "final_test_loss" and p["mechanism"]["primary"]["margin"] == 0.012
    assert p["recipe"]["lr"] == 0.1 and p["recipe"]["compile"] is True  # the code path is part of the plan


def test_a_written_plan_is_never_rewritten(folder, capsys):
    """Writing the same plan twice is a no-op; a plan on disk that differs is refused with one line."""
    confirm.main(["plan", "--results", str(folder)])
    path = folder / "confirm" / "plan.json"
    plan = json.loads(path.read_text())
    confirm.main(["plan", "--results", str(folder)])
    assert "already this plan" in capsys.readouterr().out
    path.write_text(json.dumps(plan | {"main": plan["main"] | {"seeds": [0, 1]}}))
    with pytest.raises(SystemExit) as e:
        confirm.main(["plan", "--results", str(folder)])
    assert e.value.code == 2 and "holds another plan" in capsys.readouterr().err


def test_no_run_starts_before_the_plan_is_committed(folder, capsys, monkeypatch):
    """In a git repository whose HEAD lacks the plan, `confirm.py main` refuses before any train.py starts; once
    committed as it is on disk, it goes on to train."""
    monkeypatch.setattr(results, "REPO", str(folder))
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    confirm.main(["plan", "--results", str(folder)])
    started = []
    monkeypatch.setattr(datasize, "spawn", lambda args, env: started.append((args, env)) or Done())
    with pytest.raises(SystemExit) as e:
        confirm.main(["main", "--results", str(folder)])
    assert e.value.code == 2 and "is not committed as it is on disk" in capsys.readouterr().err and not started
    git = ["git", "-C", str(folder), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "add", "confirm/plan.json"], check=True)
    subprocess.run([*git, "commit", "-qm", "plan"], check=True)
    confirm.main(["main", "--results", str(folder)])
    assert len(started) == 16  # 4 variants x 4 packs of 5 seeds, each train.py with one thread
    assert all(env["OMP_NUM_THREADS"] == "1" for _, env in started)
    assert [args[1] for args, _ in started[:4]] == ["none", "l1", "l2", "l1l2"]


class Done:
    """A train.py that has finished well."""
    returncode = 0

    def poll(self):
        return 0


def test_packs_carry_the_plans_settings_and_nothing_else(folder):
    """Every pack's arguments come from the plan: main packs one variant's 5 seeds with its λ's; the mechanism packs
    its four arms (none_normmatch beside l2) on 1,000 images for 9,375 steps at the chosen λ2."""
    p = confirm.plan(str(folder))
    main = confirm.packs("main", p, str(folder))
    assert main[1][0] == ["--variant", "l1", "--l1", "3e-05", "--epochs", "15", "--seeds", "100,101,102,103,104",
                          "--packed", "--out", os.path.join(str(folder), "confirm/main")]
    mech = confirm.packs("mechanism", p, str(folder))
    assert len(mech) == 2 and mech[0][0][:12] == ["--variant", "none,l2,none_normmatch,l2_conv9", "--l2", "0.001",
                                                  "--train-subset", "1000", "--steps", "9375", "--epochs", "15",
                                                  "--seeds", "200,201,202,203,204"]


@pytest.mark.parametrize("verdicts,decision", [
    ({("l2", "none"): "beats none", ("none_normmatch", "l2"): "is equal to l2 within ±0.012",
      ("l2_conv9", "none"): "is equal to none within ±0.012"}, "the effective learning rate"),
    ({("l2", "none"): "beats none", ("none_normmatch", "none"): "is equal to none within ±0.012",
      ("l2_conv9", "l2"): "is equal to l2 within ±0.012"}, "regularization of the classifier"),
    ({("l2", "none"): "beats none", ("none_normmatch", "l2"): "is not distinguishable from l2"}, "in between"),
    ({("l2", "none"): "is not distinguishable from none"}, "not replicated"),
])
def test_the_mechanism_decision_uses_the_plans_words(verdicts, decision):
    """Each pattern of verdicts gives the decision the plan names for it."""
    assert rules.mechanism_decision(verdicts) == decision and decision in rules.MECHANISM_DECISION


def test_two_packs_that_write_one_file_never_run_at_once(folder, monkeypatch):
    """The mechanism's two packs write the same four files: the second starts only after the first has ended, and
    a main pack runs beside the first meanwhile."""
    monkeypatch.setattr(confirm, "committed_plan", lambda f: confirm.plan(f))
    log, live = [], []

    class Proc:
        def __init__(self, args):
            self.args, self.polls = args, 0
            log.append(("start", args[1], [n for n, _ in live]))
            live.append((args[1], self))

        def poll(self):
            self.polls += 1
            if self.polls < 3:
                return None
            live.remove((self.args[1], self))
            return 0
        returncode = 0
    monkeypatch.setattr(datasize, "spawn", lambda args, env: Proc(args))
    monkeypatch.setattr(datasize.time, "sleep", lambda s: None)
    confirm.run(["mechanism", "main"], str(folder), [])
    mech = [i for i, (_, v, _) in enumerate(log) if v.startswith("none,l2")]
    assert len(mech) == 2 and log[1][1] == "none" and "none,l2,none_normmatch,l2_conv9" not in log[mech[1]][2], log


def fill(folder, where, arms, seeds, mnist, loss=None, acc=lambda v, s: 99.45):
    """Synthetic finished runs of each arm {name: config} on seeds; loss(name, seed) sets the final test loss."""
    from conftest import make_result
    os.makedirs(folder / where, exist_ok=True)
    for name, cfg in arms.items():
        make_result(folder / where, name, {s: acc(name, s) for s in seeds}, mnist, **cfg)
        if loss:
            path = folder / where / f"{name}.json"
            r = json.loads(path.read_text())
            for run in r["runs"]:
                run["epochs"][-1]["test_loss"] = loss(name, run["seed"])
            path.write_text(json.dumps(r))


def test_the_reading_waits_for_every_seed_then_speaks_the_plans_words(folder, mnist):
    """With one seed missing there is no verdict; complete, the mechanism arms whose losses follow l2's effective
    step give "the effective learning rate", and the main family equal within ±0.05 where the 90% interval is."""
    confirm.main(["plan", "--results", str(folder)])
    mech = {"none": {}, "l2": {"l2": 1e-3}, "none_normmatch": {"match_norms": "l2"},
            "l2_conv9": {"l2": 1e-3, "penalized": "conv9"}}
    wobble = lambda n, s: random.Random(f"{n}{s}").gauss(0, 0.002)  # each arm's own noise per seed
    effect = {"none": 0.100, "l2": 0.066, "none_normmatch": 0.067, "l2_conv9": 0.099}
    fill(folder, "confirm/n1000", mech, range(200, 209), mnist, loss=lambda n, s: effect[n] + wobble(n, s))
    assert confirm.reading(str(folder))["mechanism"]["contrasts"] is None
    assert plot.plot_confirm(confirm.reading(str(folder))) is None  # no contrast is drawn before all seeds are in
    fill(folder, "confirm/n1000", mech, range(200, 210), mnist, loss=lambda n, s: effect[n] + wobble(n, s))
    m = confirm.reading(str(folder))["mechanism"]
    assert m["done"] == m["total"] == 40 and m["decision"] == "the effective learning rate", m["contrasts"]
    assert m["contrasts"][("l2", "none")]["verdict"] == "beats none"
    assert m["contrasts"][("none_normmatch", "l2")]["verdict"] == "is equal to l2 within ±0.012"
    main = {"none": {}, "l1": {"l1": 3e-5}, "l2": {"l2": 3e-4}, "l1l2": {"l1": 3e-5, "l2": 3e-4}}
    fill(folder, "confirm/main", main, range(100, 120), mnist, acc=lambda n, s: [99.4, 99.45, 99.5, 99.55][(s * 3 + len(n) * 5) % 4])
    c = confirm.reading(str(folder))["main"]["contrasts"]
    assert sorted(c) == [("l1", "none"), ("l1l2", "none"), ("l2", "none")]
    assert all(v["verdict"] in ("is equal to none within ±0.05", "is not distinguishable from none") for v in c.values())
    fresh = findings.targets({}, confirm.reading(str(folder)))
    assert "fresh seeds `none`, `l1`, `l2`, `l1l2` reach 99.45% on average, and 0 of the 80 models end below" in fresh, fresh
    said = findings.replicated(confirm.reading(str(folder)))
    assert said.startswith(" On 20 fresh seeds per variant, at the ±0.05") and "`l1`" in said and "`l1l2`" in said, said
    assert plot.plot_confirm(confirm.reading(str(folder)))[:4] == b"\x89PNG"
    five = {"l1": {"verdict": "beats none", "reject": True, "side": 1, "n": 5},
            "l2": {"verdict": "is equal to none within ±0.1", "reject": False, "side": 0, "n": 5}}
    text = findings.confirmed(confirm.reading(str(folder)), five)
    assert "0 of the 80 models end below 99.40%" in text and "`none` 99.475 reaches 99.45" in text, text
    against = next(line for line in text.splitlines() if "five-seed study" in line)
    assert "the two disagree: `l1` beats none with 5 seeds, " in against and "`l2`" not in against, against
    text = findings.confirmed(confirm.reading(str(folder)), {"l2": five["l2"]})
    assert "no verdict contradicts it: `l2` is equal to none within ±0.1 with 5 seeds, " in text, text


def test_a_pack_another_process_trains_takes_a_place_and_is_not_started(folder, monkeypatch):
    """While another process holds none.json's lock in the main study, a second confirm.py starts one pack beside it
    (not two), never a none pack, and starts the none packs once the lock is free."""
    import fcntl
    monkeypatch.setattr(confirm, "committed_plan", lambda f: confirm.plan(f))
    main = folder / "confirm" / "main"
    os.makedirs(main)
    lock = open(main / "none.lock", "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    started, live = [], []

    class Proc:
        returncode = 0

        def __init__(self, args):
            started.append((args[1], len(live)))
            live.append(self)
            self.polls = 0

        def poll(self):
            self.polls += 1
            if self.polls == 2 and len(started) == 1:
                lock.close()  # the other process ends while our first pack runs
            if self.polls < 3:
                return None
            live.remove(self)
            return 0
    monkeypatch.setattr(datasize, "spawn", lambda args, env: Proc(args))
    monkeypatch.setattr(datasize.time, "sleep", lambda s: None)
    confirm.run(["main"], str(folder), [])
    assert started[0] == ("l1", 0), started
    assert started[1][0] == "none" and all(n <= 1 for _, n in started), started
    assert sorted(v for v, _ in started) == sorted(["none", "l1", "l2", "l1l2"] * 4)
