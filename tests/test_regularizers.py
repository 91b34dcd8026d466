"""Penalties: the right values, the right gradients, the right parameters; the λ's and the recipe are the ones
the validation split chose."""
import json
import os
from dataclasses import asdict

import torch

import regularizers
import rules
from config import Config
from conftest import ROOT
from model import Net
from regularizers import VARIANTS, Variant, penalized, penalty


def test_penalty_values_match_a_float64_hand_computation():
    """l1 * sum|w| + l2 * sum w^2 equals the same sum written out by hand in float64."""
    w1 = torch.tensor([[1.5, -2.0], [0.0, 0.25]], dtype=torch.float64)
    w2 = torch.tensor([-3.0, 0.5], dtype=torch.float64)
    hand_l1 = 1.5 + 2.0 + 0.0 + 0.25 + 3.0 + 0.5          # 7.25
    hand_l2 = 2.25 + 4.0 + 0.0 + 0.0625 + 9.0 + 0.25      # 15.5625
    torch.testing.assert_close(penalty([w1, w2], l1=0.1), torch.tensor(0.1 * hand_l1, dtype=torch.float64))
    torch.testing.assert_close(penalty([w1, w2], l2=0.01), torch.tensor(0.01 * hand_l2, dtype=torch.float64))
    torch.testing.assert_close(penalty([w1, w2], l1=0.1, l2=0.01),
                               torch.tensor(0.1 * hand_l1 + 0.01 * hand_l2, dtype=torch.float64))
    assert penalty([w1, w2]).item() == 0.0


def test_penalty_gradients():
    """d/dw of l1|w| is l1*sign(w) and of l2 w^2 is 2*l2*w."""
    w = torch.tensor([1.5, -2.0, 0.25, -0.5], dtype=torch.float64, requires_grad=True)
    penalty([w], l1=0.3, l2=0.05).backward()
    torch.testing.assert_close(w.grad, 0.3 * torch.sign(w.detach()) + 2 * 0.05 * w.detach())


def test_penalty_covers_conv_weights_only():
    """All nine convolution weights are penalised; BatchNorm's weight and bias never are."""
    net = Net()
    names = {id(p): n for n, p in net.named_parameters()}
    covered = sorted(names[id(p)] for p in penalized(net))
    assert covered == sorted(f"conv{i}.weight" for i in range(1, 10))
    assert sum(p.numel() for p in penalized(net)) == 8286 - 2 * (10 + 16 + 16 + 16 + 10 + 10)


def test_variants_differ_only_where_their_names_say():
    """The four variants of the study (and the Ghost BN pair) differ only where their names say."""
    assert {"none", "l1", "l2", "l1l2", "gbn", "gbn_l1l2"} <= set(VARIANTS)
    v = VARIANTS
    assert v["none"].l1 == v["none"].l2 == 0
    assert v["l1"].l1 > 0 and v["l1"].l2 == 0
    assert v["l2"].l2 > 0 and v["l2"].l1 == 0
    assert (v["l1l2"].l1, v["l1l2"].l2) == (v["l1"].l1, v["l2"].l2)
    assert v["gbn"].norm == "gbn" and (v["gbn_l1l2"].l1, v["gbn_l1l2"].l2) == (v["l1l2"].l1, v["l1l2"].l2)


def test_the_defaults_and_the_lambdas_are_what_recipe_json_chose():
    """Config's defaults are the recipe that results/recipe.json chose on the validation split, and the variant
    table's λ's are its λ's: changing either by hand fails here."""
    recipe = json.load(open(os.path.join(ROOT, "results", "recipe.json")))
    chosen = next(c for c in recipe["candidates"] if c["name"] == recipe["chosen"])["config"]
    assert rules.differences(asdict(Config()), chosen, ignore=("val",)) == []
    assert (regularizers.L1, regularizers.L2) == (recipe["lambdas"]["l1"], recipe["lambdas"]["l2"])
    assert VARIANTS["l1l2"] == Variant(l1=recipe["lambdas"]["l1"], l2=recipe["lambdas"]["l2"])
