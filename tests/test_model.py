"""The model: exactly the seed's 8,286 parameters, in the seed's layer order."""
import math

import torch
import torch.nn.functional as F

from model import GhostBatchNorm2d, Net, count_params, summary

SEED_TABLE = [  # (layer type, output shape, params) of the seed's write-up, in forward order
    ("Conv2d", [10, 28, 28], 90), ("ReLU", [10, 28, 28], 0), ("BatchNorm2d", [10, 28, 28], 20),
    ("Dropout", [10, 28, 28], 0), ("Conv2d", [16, 28, 28], 1440), ("ReLU", [16, 28, 28], 0),
    ("BatchNorm2d", [16, 28, 28], 32), ("Dropout", [16, 28, 28], 0), ("Conv2d", [10, 28, 28], 160),
    ("MaxPool2d", [10, 14, 14], 0), ("Conv2d", [16, 14, 14], 1440), ("ReLU", [16, 14, 14], 0),
    ("BatchNorm2d", [16, 14, 14], 32), ("Conv2d", [16, 14, 14], 2304), ("ReLU", [16, 14, 14], 0),
    ("BatchNorm2d", [16, 14, 14], 32), ("Dropout", [16, 14, 14], 0), ("Conv2d", [16, 14, 14], 256),
    ("MaxPool2d", [16, 7, 7], 0), ("Conv2d", [10, 7, 7], 1440), ("ReLU", [10, 7, 7], 0),
    ("BatchNorm2d", [10, 7, 7], 20), ("Dropout", [10, 7, 7], 0), ("Conv2d", [10, 7, 7], 900),
    ("ReLU", [10, 7, 7], 0), ("BatchNorm2d", [10, 7, 7], 20), ("Dropout", [10, 7, 7], 0),
    ("AvgPool2d", [10, 1, 1], 0), ("Conv2d", [10, 1, 1], 100),
]


def test_parameter_count_is_8286():
    """Net() with default arguments has exactly 8,286 parameters, and so has its Ghost BN twin."""
    assert count_params(Net()) == 8286
    assert count_params(Net(norm="gbn")) == 8286


def test_layer_table_matches_the_seed():
    """Layers are registered in forward order with the seed's types, output shapes and parameter counts."""
    rows = []
    net = Net().eval()
    x = torch.zeros(2, 1, 28, 28)
    for layer in list(net.children())[:-1]:  # the last child is the Flatten that makes (N, 10)
        x = layer(x)
        rows.append((type(layer).__name__, list(x.shape[1:]), count_params(layer)))
    assert rows == SEED_TABLE
    assert "Total params: 8,286" in summary(Net())


def test_a_batch_of_n_images_gives_n_rows_of_10_logits():
    """A batch of N images gives logits of shape (N, 10)."""
    assert Net()(torch.zeros(5, 1, 28, 28)).shape == (5, 10)


def test_initial_loss_near_ln10(mnist):
    """At initialisation on real images the loss is near ln 10 = 2.30: no class is favoured yet."""
    import data
    torch.manual_seed(0)
    x = data.to_float(mnist[0][:512], {"mean": 0.1307, "std": 0.3081})
    loss = F.cross_entropy(Net()(x), mnist[1][:512].long()).item()
    assert abs(loss - math.log(10)) < 0.25, f"initial loss {loss:.3f} far from ln 10 = 2.303"


def test_overfits_one_batch(mnist):
    """Thirty-two real images reach 100% train accuracy within 60 steps: the net can learn."""
    import data
    torch.manual_seed(0)
    net = Net(dropout=0.0)
    x, y = data.to_float(mnist[0][:32], {"mean": 0.1307, "std": 0.3081}), mnist[1][:32].long()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(60):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    acc = (net(x).argmax(1) == y).float().mean().item() * 100
    assert acc == 100, f"train acc {acc:.1f} < 100 after 60 steps on one batch"


def test_ghost_bn_keeps_a_short_last_virtual_batch():
    """A batch of 28 with virtual batch 8 (the short last batch of an epoch) is normalised as chunks of 8, 8, 8
    and 4, each by its own statistics: the last chunk equals BatchNorm over those 4 samples alone."""
    torch.manual_seed(0)
    x = torch.randn(28, 3, 4, 4, dtype=torch.float64) * 2 + 1
    x[24:] += 7  # the short chunk has its own mean, so normalising it with any other chunk would show
    gbn = GhostBatchNorm2d(3, virtual_batch=8).double()
    out = gbn(x)
    for start, stop in [(0, 8), (8, 16), (16, 24), (24, 28)]:
        alone = torch.nn.BatchNorm2d(3).double()(x[start:stop])
        torch.testing.assert_close(out[start:stop], alone, rtol=1e-12, atol=1e-12,
                                   msg=lambda m: f"samples {start}-{stop}: {m}")
    assert not torch.allclose(out, torch.nn.BatchNorm2d(3).double()(x), atol=1e-3)


def test_ghost_bn_statistics_on_a_hand_made_batch():
    """Each virtual batch is normalised by its own mean and variance; running stats average them."""
    x = torch.zeros(4, 1, 1, 2)
    x[:2, 0, 0] = torch.tensor([[0.0, 2.0], [4.0, 6.0]])       # virtual batch 1: mean 3, var 5
    x[2:, 0, 0] = torch.tensor([[10.0, 10.0], [10.0, 10.0]])   # virtual batch 2: mean 10, var 0
    gbn = GhostBatchNorm2d(1, virtual_batch=2, eps=0.0, momentum=1.0)
    out = gbn(x)
    torch.testing.assert_close(out[:2].flatten(), (torch.tensor([0.0, 2, 4, 6]) - 3) / math.sqrt(5))
    # a constant virtual batch normalises to 0 (eps = 0 would divide by 0; guard with a tiny eps below)
    gbn2 = GhostBatchNorm2d(1, virtual_batch=2, momentum=1.0)
    torch.testing.assert_close(gbn2(x)[2:], torch.zeros(2, 1, 1, 2))
    # running mean = mean of (3, 10); running var = mean of the unbiased variances (5 * 4/3, 0)
    torch.testing.assert_close(gbn2.running_mean, torch.tensor([6.5]))
    torch.testing.assert_close(gbn2.running_var, torch.tensor([10.0 / 3]))


def test_ghost_bn_normalises_each_virtual_batch_on_its_own():
    """N = 32 with virtual batch 8: each chunk of 8 is normalised by its own mean and biased variance, then scaled
    and shifted; the running statistics move by `momentum` towards the chunks' mean mean and mean unbiased variance."""
    torch.manual_seed(0)
    x = torch.randn(32, 3, 4, 4, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.5]).view(1, 3, 1, 1) + 2
    x[8:16] += 5  # chunks with different statistics, so one whole-batch BN cannot pass
    gbn = GhostBatchNorm2d(3, virtual_batch=8).double()
    with torch.no_grad():
        gbn.weight.copy_(torch.tensor([0.5, 2.0, -1.0]))
        gbn.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    out = gbn(x)
    # by hand: per chunk and channel, over the 8 x 4 x 4 = 128 values
    w, b, n = gbn.weight.detach().view(1, 3, 1, 1), gbn.bias.detach().view(1, 3, 1, 1), 8 * 4 * 4
    expected, means, unbiased = [], [], []
    for c in x.split(8):
        mean = c.sum(dim=(0, 2, 3), keepdim=True) / n
        sq = ((c - mean) ** 2).sum(dim=(0, 2, 3), keepdim=True)
        expected.append((c - mean) / torch.sqrt(sq / n + gbn.eps) * w + b)
        means.append(mean.flatten())
        unbiased.append(sq.flatten() / (n - 1))
    torch.testing.assert_close(out, torch.cat(expected), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out, torch.nn.BatchNorm2d(3).double()(x) * w + b, atol=1e-3)
    m = gbn.momentum
    torch.testing.assert_close(gbn.running_mean, (1 - m) * 0 + m * sum(means) / 4, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gbn.running_var, (1 - m) * 1 + m * sum(unbiased) / 4, rtol=1e-12, atol=1e-12)
    assert gbn.num_batches_tracked.item() == 1
    # evaluation uses the running statistics, as BN does
    rm, rv = gbn.running_mean.view(1, 3, 1, 1), gbn.running_var.view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(gbn.eval()(x), (x - rm) / torch.sqrt(rv + gbn.eps) * w + b, rtol=1e-12, atol=1e-12)
