"""The mechanism control's arms: none_normmatch (l2's norms without its penalty) and l2_conv9 (the penalty on the
classifier alone). Each property here is one the control's reading rests on."""
import json

import pytest
import torch

import model
import regularizers
from conftest import FP32

FAST = ["--dropout", "0", *FP32]
# float64: models at different places in a pack round their float32 sums differently (test_packed.py)
EXACT = ["--dtype", "float64", *FP32]


def test_rescaling_conv1_to_8_leaves_the_output_unchanged():
    """In float64, in training mode (batch statistics), scaling each of conv1-8 by its own α leaves the logits
    unchanged up to BatchNorm's ε (here 1e-12); scaling conv9, the classifier, changes them."""
    torch.manual_seed(0)
    net = model.Net(0.0).double().train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-12
    x = torch.randn(16, 1, 28, 28, dtype=torch.float64)
    convs = regularizers.penalized(net)
    before = net(x)
    with torch.no_grad():
        for i, w in enumerate(convs[:regularizers.SCALE_INVARIANT]):
            w.mul_(0.3 + 0.4 * i)
    torch.testing.assert_close(net(x), before, rtol=0, atol=1e-6)
    with torch.no_grad():
        convs[-1].mul_(2.0)
    assert (net(x) - before).abs().max() > 0.1


def test_match_norms_rescales_weights_and_momentum_of_the_member_only():
    """Model 1 of a pack of 3 takes model 0's per-layer norms on conv1-8, its momentum buffer is divided by the same
    α, conv9 and models 0 and 2 are untouched (bit for bit)."""
    torch.manual_seed(0)
    net = model.PackedNet(3, 0.0).double()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    for p in net.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    bufs = {n: opt.state[p]["momentum_buffer"].clone() for n, p in net.named_parameters()}
    regularizers.match_norms(net, opt, torch.tensor([1]), torch.tensor([0]))
    for i, (name, p) in enumerate((n, p) for n, p in net.named_parameters() if p.dim() == 4):
        old, new, buf = before[name].reshape(3, -1), p.detach().reshape(3, -1), opt.state[p]["momentum_buffer"].reshape(3, -1)
        assert torch.equal(new[[0, 2]], old[[0, 2]]) and torch.equal(buf[[0, 2]], bufs[name].reshape(3, -1)[[0, 2]])
        if i < regularizers.SCALE_INVARIANT:
            alpha = old[0].norm() / old[1].norm()
            torch.testing.assert_close(new[1].norm(), old[0].norm(), rtol=1e-12, atol=0)
            torch.testing.assert_close(buf[1], bufs[name].reshape(3, -1)[1] / alpha, rtol=1e-12, atol=0)
        else:
            assert torch.equal(new[1], old[1]), name


def test_the_classifier_penalty_covers_conv9_alone():
    """l2_conv9's penalty is λ2·Σw² over conv9 only, beside a model whose penalty covers all nine (float64)."""
    torch.manual_seed(0)
    net = model.PackedNet(2, 0.0).double()
    members = [(regularizers.Variant(l2=1e-3), 0), (regularizers.Variant(l2=1e-3, penalized="conv9"), 0)]
    lam = regularizers.lambdas(members, "l2", "cpu", torch.float64)
    assert lam.shape == (9, 2) and lam[:, 0].tolist() == [1e-3] * 9 and lam[:, 1].tolist() == [0.0] * 8 + [1e-3]
    pen = regularizers.penalty(regularizers.penalized(net), l2=lam, k=2)
    convs = [p.reshape(2, -1) for p in regularizers.penalized(net)]
    torch.testing.assert_close(pen[0], 1e-3 * sum(w[0].pow(2).sum() for w in convs), rtol=1e-12, atol=0)
    torch.testing.assert_close(pen[1], 1e-3 * convs[-1][1].pow(2).sum(), rtol=1e-12, atol=0)


def test_the_norm_matched_model_has_l2s_norms_at_every_step(run_train, tmp_path):
    """Trained in one pack with l2 (λ2 = 1e-2) and evaluated after every step, none_normmatch's conv1-8 norms
    are l2's at each of the 4 steps, while its conv9 keeps its own (no penalty) and grows apart."""
    code, _ = run_train("--variant", "l2,none_normmatch", "--packed", "--l2", "1e-2", "--steps", "4", "--epochs", "4",
                        "--test-limit", "64",
                        *FAST, name="l2")
    l2, matched = (json.load(open(tmp_path / f"{n}.json")) for n in ("l2", "none_normmatch"))
    assert code == 0 and matched["config"]["match_norms"] == "l2" and matched["config"]["l2"] == 0
    for a, b in zip(l2["runs"][0]["epochs"], matched["runs"][0]["epochs"], strict=True):
        for k in [f"conv{i}" for i in range(1, 9)]:
            assert b["weight_norm"][k] == pytest.approx(a["weight_norm"][k], rel=1e-6), (b["epoch"], k)
    assert matched["runs"][0]["epochs"][-1]["weight_norm"]["conv9"] > l2["runs"][0]["epochs"][-1]["weight_norm"]["conv9"]
    assert matched["runs"][0]["epochs"][-1]["penalty"] == 0


@pytest.mark.parametrize("arm", ["none_normmatch", "l2_conv9"])
def test_zero_lambda_reproduces_none(run_train, tmp_path, arm):
    """With λ2 = 0 each arm computes what none computes in the same pack (float64, to 1e-9): l2 is then none, so
    matching its norms rescales by 1, and a classifier penalty of 0 adds nothing."""
    code, none = run_train("--variant", f"none,l2,{arm}", "--packed", "--l2", "0", "--epochs", "2", "--train-limit", "96",
                           "--test-limit", "64", *EXACT)
    other = json.load(open(tmp_path / f"{arm}.json"))
    assert code == 0 and other["config"]["l2"] == 0
    for a, b in zip(none["runs"][0]["epochs"], other["runs"][0]["epochs"], strict=True):
        for key in ("train_loss", "penalty", "test_loss", "train_acc", "test_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-9, abs=1e-12), (key, a[key], b[key])
        assert b["weight_norm"] == pytest.approx(a["weight_norm"], rel=1e-9)
