"""Packed training: K models in one grouped-conv graph are the same K models trained one by one."""
import json

import pytest
import torch

import data
from conftest import checkpoint
from model import Net, PackedNet, count_params, pack, unpack

# In float64: packing changes only the order of floating-point sums, and in float32 that rounding (~1e-7)
# flips a near-tie in a max-pool or ReLU within a few steps at lr 0.1, after which two float32 runs drift
# apart like any two runs that differ in the last bit. float64 keeps the rounding far below the tolerance,
# so this checks what packing must keep: each model's own weights, data order, dropout masks and lambda.
# Eager fp32 (float64 needs it); 2 epochs of 152 images = 10 steps, each epoch ending in a short batch of 24.
ARGS = ["--epochs", "2", "--train-limit", "152", "--test-limit", "64", "--dtype", "float64", "--precision", "fp32"]


def test_pack_unpack_round_trip():
    """Packing K state_dicts and unpacking them gives the originals back; the pack holds K x 8,286 parameters."""
    nets = [Net() for _ in range(3)]
    packed = PackedNet(3)
    packed.load_state_dict(pack([n.state_dict() for n in nets]))
    assert count_params(packed) == 3 * 8286
    for net, sd in zip(nets, unpack(packed.state_dict(), 3)):
        assert all(torch.equal(net.state_dict()[k], sd[k]) for k in sd)


def test_packed_forward_equals_solo():
    """In eval mode, model k of a pack computes what Net k computes on the same images."""
    nets = [Net().eval() for _ in range(3)]
    packed = PackedNet(3).eval()
    packed.load_state_dict(pack([n.state_dict() for n in nets]))
    x = torch.randn(8, 1, 28, 28)
    out = packed(x.expand(-1, 3, -1, -1).contiguous())
    for k, net in enumerate(nets):
        torch.testing.assert_close(out[:, k], net(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("masks", ["bytes", "bernoulli"])
def test_packed_training_equals_solo(run_train, tmp_path, masks):
    """Two variants x two seeds trained packed for 10 steps end where the four solo runs end (1e-5), whichever
    way the dropout masks are drawn: each model draws its own from its own generator."""
    variants = ["l1", "l2"]  # one lambda each, so a lambda given to the wrong model shows in the penalty
    args = [*ARGS, "--dropout-masks", masks]
    for name in variants:
        run_train("--variant", name, "--seeds", "0,1", *args, out=tmp_path / "solo", name=name)
    run_train("--variant", ",".join(variants), "--seeds", "0,1", "--packed", *args, out=tmp_path / "packed")
    for name in variants:
        solo, packed = (json.load(open(tmp_path / d / f"{name}.json")) for d in ("solo", "packed"))
        assert packed["config"]["packed"] and not solo["config"]["packed"]
        assert [r["pack_size"] for r in packed["runs"]] == [4, 4]
        for a, b in zip(solo["runs"], packed["runs"], strict=True):
            assert a["seed"] == b["seed"]
            for ea, eb in zip(a["epochs"], b["epochs"], strict=True):
                for key in ("train_loss", "penalty", "test_loss", "train_acc", "test_acc"):
                    assert abs(ea[key] - eb[key]) <= 1e-5, (name, a["seed"], key, ea[key], eb[key])
            wa, wb = (torch.load(checkpoint(tmp_path / d, r), weights_only=True) for d, r in (("solo", a), ("packed", b)))
            for k in wa:
                torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-5, msg=lambda m: f"{name} seed {a['seed']} {k}: {m}")


def test_pack_draws_what_each_model_draws_alone(mnist):
    """One gather, one rotation and one byte buffer for a pack of 3 give model k, bit for bit, the images and the
    dropout bytes it gets when trained alone (its own generators; a short batch of 24 included)."""
    norm = {"mean": 0.1307, "std": 0.3081}
    for n in (32, 24):
        idx = torch.randint(0, 60000, (n, 3), generator=torch.Generator().manual_seed(n))
        gens = lambda: [torch.Generator().manual_seed(s) for s in range(3)]
        together = data.augment(mnist[0][idx], norm, 7.0, gens())
        alone = [data.augment(mnist[0][idx[:, [k]]], norm, 7.0, [g]) for k, g in enumerate(gens())]
        assert torch.equal(together, torch.cat(alone, 1))
        packed, solo = PackedNet(3), [PackedNet(1) for _ in range(3)]
        packed.set_dropout_generators(gens())
        for net, g in zip(solo, gens()):
            net.set_dropout_generators([g])
        per_model = [net.draw_noise(n) for net in solo]
        for layer, bytes_ in enumerate(packed.draw_noise(n)):
            assert torch.equal(bytes_, torch.cat([m[layer] for m in per_model], 1))
