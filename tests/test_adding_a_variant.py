"""docs/adding-a-variant.md done as it says, in a temporary table: L2 as SGD's weight decay, a row with a new knob.
It trains, is recorded, is compared with none, and gives l2's weights, since weight_decay = 2·λ2 is l2's update."""
import dataclasses

import pytest
import torch

import config
import loop
import regularizers
import results
import rules
import stats
from conftest import FP32, checkpoint


@dataclasses.dataclass(frozen=True)
class WeightDecayVariant(regularizers.Variant):
    weight_decay: float = 0.0  # SGD's weight decay on the penalized weights


@pytest.fixture
def wd(monkeypatch):
    """The three steps of the guide: the knob and the row, the Config field with the same default, where it acts."""
    monkeypatch.setitem(regularizers.VARIANTS, "wd", WeightDecayVariant(weight_decay=2 * regularizers.L2))
    monkeypatch.setattr(config, "Config", dataclasses.make_dataclass(
        "Config", [("weight_decay", float, 0.0)], bases=(config.Config,)))

    def param_groups(net, cfg):  # the l2 penalty covers the convolution weights only, never BatchNorm's
        decayed = {id(p) for p in regularizers.penalized(net)}
        return [{"params": [p for p in net.parameters() if id(p) in decayed], "weight_decay": cfg.weight_decay},
                {"params": [p for p in net.parameters() if id(p) not in decayed]}]
    monkeypatch.setattr(loop, "param_groups", param_groups)


def test_weight_decay_as_a_new_variant_trains_records_compares_and_equals_l2(wd, run_train, tmp_path):
    exact = ["--epochs", "1", "--seeds", "0,1", *FP32, "--dtype", "float64"]
    found = {}
    for v in ("none", "l2", "wd"):
        code, found[v] = run_train("--variant", v, *exact, name=v)
        assert code == 0 and found[v]["config"]["weight_decay"] == (2 * regularizers.L2 if v == "wd" else 0.0)
    assert results.load(str(tmp_path / "wd.json"))["variant"] == "wd"  # recorded: every derived number checks
    assert rules.differences(found["l2"]["config"], found["wd"]["config"], ignore=rules.experiment()) == []
    paired = stats.pairs(results.load_folder(str(tmp_path)))
    assert [s for s, _ in (paired["wd"], paired["l2"])] == [[0, 1], [0, 1]], paired  # compared with none, seed by seed
    for run_l2, run_wd, run_none in zip(found["l2"]["runs"], found["wd"]["runs"], found["none"]["runs"]):
        w_l2, w_wd, w_none = (torch.load(checkpoint(tmp_path, r), weights_only=True) for r in (run_l2, run_wd, run_none))
        for k in w_l2:
            torch.testing.assert_close(w_wd[k], w_l2[k], rtol=1e-9, atol=1e-12, msg=k)
        assert max((w_wd[k] - w_none[k]).abs().max().item() for k in w_l2 if k.endswith("weight")) > 1e-6  # it acted
        assert abs(run_wd["epochs"][-1]["test_loss"] - run_l2["epochs"][-1]["test_loss"]) < 1e-9
        assert run_wd["epochs"][-1]["penalty"] == 0 < run_l2["epochs"][-1]["penalty"]

