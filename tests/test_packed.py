"""Packed training: K models in one grouped-conv graph are the same K models trained one by one."""
import torch

from model import Net, PackedNet, count_params, pack, unpack

# In float64: packing changes only the order of floating-point sums, and in float32 that rounding (~1e-7)
# flips a near-tie in a max-pool or ReLU within a few steps at lr 0.1, after which two float32 runs drift
# apart like any two runs that differ in the last bit. float64 keeps the rounding far below the tolerance,
# so this checks what packing must keep: each model's own weights, data order, dropout masks and lambda.
ARGS = ["--epochs", "2", "--train-limit", "304", "--test-limit", "160", "--dtype", "float64"]  # 9 + 1 short batch


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


def test_packed_training_equals_solo(run_train, tmp_path):
    """Three variants x two seeds trained packed for 20 steps end where the six solo runs end (1e-5)."""
    variants = ["none", "l1", "l2"]
    for name in variants:
        run_train("--variant", name, "--seeds", "0,1", *ARGS, out=tmp_path / "solo", name=name)
    run_train("--variant", ",".join(variants), "--seeds", "0,1", "--packed", *ARGS, out=tmp_path / "packed")
    import json
    for name in variants:
        solo, packed = (json.load(open(tmp_path / d / f"{name}.json")) for d in ("solo", "packed"))
        assert packed["config"]["packed"] and not solo["config"]["packed"]
        for a, b in zip(solo["runs"], packed["runs"]):
            assert a["seed"] == b["seed"]
            for ea, eb in zip(a["epochs"], b["epochs"]):
                for key in ("train_loss", "penalty", "test_loss", "train_acc", "test_acc"):
                    assert abs(ea[key] - eb[key]) <= 1e-5, (name, a["seed"], key, ea[key], eb[key])
            wa = torch.load(tmp_path / "solo" / f"{name}-seed{a['seed']}.pt", weights_only=True)
            wb = torch.load(tmp_path / "packed" / f"{name}-seed{a['seed']}.pt", weights_only=True)
            for k in wa:
                torch.testing.assert_close(wb[k], wa[k], rtol=0, atol=1e-5, msg=lambda m: f"{name} seed {a['seed']} {k}: {m}")
