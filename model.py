"""The seed's 8,286-parameter MNIST CNN: BatchNorm + Dropout + 1x1 convs + global average pooling.

    python model.py        # print the layer table (type, output shape, params) and the total
"""
from collections import OrderedDict

import torch
import torch.nn as nn


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that normalises each virtual batch of `virtual_batch` samples on its own while training.

    Same parameters and buffers as nn.BatchNorm2d (so checkpoints are interchangeable); running statistics
    are the mean over virtual batches of their means and unbiased variances, updated once per step, and are
    used for evaluation exactly as in BN. A training batch that does not split evenly keeps a short last
    virtual batch (the last batch of an epoch may be short).
    """

    def __init__(self, num_features, virtual_batch=8, **kw):
        super().__init__(num_features, **kw)
        self.virtual_batch = virtual_batch

    def forward(self, x):  # x: (N, C, H, W)
        if not self.training or x.shape[0] <= self.virtual_batch:
            return super().forward(x)
        # under bf16 autocast x arrives in bf16: statistics in the buffers' dtype, as BatchNorm2d computes its own
        x = x.to(self.running_mean.dtype)
        chunks = x.split(self.virtual_batch)
        means = torch.stack([c.mean(dim=(0, 2, 3)) for c in chunks])                 # (G, C)
        vars_ = torch.stack([c.var(dim=(0, 2, 3), unbiased=False) for c in chunks])  # (G, C)
        with torch.no_grad():  # the running statistics see every virtual batch, as BN sees every batch
            n = torch.tensor([c.numel() // c.shape[1] for c in chunks], dtype=x.dtype, device=x.device)
            unbiased = vars_ * (n / (n - 1).clamp(min=1))[:, None]
            self.num_batches_tracked += 1
            self.running_mean.lerp_(means.mean(0), self.momentum)
            self.running_var.lerp_(unbiased.mean(0), self.momentum)
        sizes = [c.shape[0] for c in chunks]
        mean = means.repeat_interleave(torch.tensor(sizes, device=x.device), dim=0)  # (N, C)
        var = vars_.repeat_interleave(torch.tensor(sizes, device=x.device), dim=0)
        x_hat = (x - mean[:, :, None, None]) * torch.rsqrt(var[:, :, None, None] + self.eps)
        return x_hat * self.weight[:, None, None] + self.bias[:, None, None]


def conv(c_in, c_out, k):
    """3x3 convolutions keep the size (padding 1); every convolution is bias-free, as in the seed."""
    return nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False)


class Net(nn.Sequential):
    """Layers are registered in forward order, so printing, iterating and the state_dict follow the data."""

    def __init__(self, dropout=0.05, norm="bn", virtual_batch=8):
        bn = lambda c: nn.BatchNorm2d(c) if norm == "bn" else GhostBatchNorm2d(c, virtual_batch)
        layers = OrderedDict()
        def block(i, c_in, c_out, drop=True):  # conv 3x3 -> ReLU -> BN (-> Dropout)
            layers[f"conv{i}"], layers[f"relu{i}"], layers[f"bn{i}"] = conv(c_in, c_out, 3), nn.ReLU(), bn(c_out)
            if drop:
                layers[f"drop{i}"] = nn.Dropout(dropout)

        block(1, 1, 10)                                          # 10x28x28
        block(2, 10, 16)                                         # 16x28x28
        layers["conv3"], layers["pool3"] = conv(16, 10, 1), nn.MaxPool2d(2)    # 10x14x14
        block(4, 10, 16, drop=False)                             # 16x14x14
        block(5, 16, 16)                                         # 16x14x14
        layers["conv6"], layers["pool6"] = conv(16, 16, 1), nn.MaxPool2d(2)    # 16x7x7
        block(7, 16, 10)                                         # 10x7x7
        block(8, 10, 10)                                         # 10x7x7
        layers["gap"], layers["conv9"] = nn.AvgPool2d(7), conv(10, 10, 1)       # 10x1x1 -> logits
        layers["flatten"] = nn.Flatten()                         # (N, 10)
        super().__init__(layers)


# -----------------------------------------------------------------------------
# K independent Nets in one graph, for training several seeds / variants at once

DTYPES = {"float32": torch.float32, "float64": torch.float64}  # of the weights and inputs; float64 for exactness checks
NOISE_LEVELS = 256  # "bytes" masks: one random byte per activation, so p is rounded to a multiple of 1/256


def quantized_p(p):
    """The drop probability that "bytes" masks really use: p rounded to the nearest multiple of 1/256."""
    return round(p * NOISE_LEVELS) / NOISE_LEVELS


class PackedDropout(nn.Module):
    """Dropout for K packed models, each drawing its masks from its own generator.

    Two ways to draw a mask (train.Config.dropout_masks):
    - "bytes" (fast): the caller hands in one uint8 tensor of random bytes per layer (PackedNet.draw_noise: one
      bulk int64 draw per model and step, ~10x cheaper than bernoulli_); an activation is dropped when its byte
      is < round(256 p), so p is quantised to 1/256 (0.05 -> 13/256 = 0.0508). The compare-and-scale is plain
      tensor arithmetic, so torch.compile fuses it into the neighbouring kernels and any dtype works.
    - "bernoulli" (the original): empty_like(x).bernoulli_(1 - p) / (1 - p), exactly as nn.Dropout draws on CPU.
    Either way each model's masks come from its own generator, so a packed model sees the masks it sees alone.
    """

    def __init__(self, p, k):
        super().__init__()
        self.p, self.k, self.generators = p, k, None

    def forward(self, x, noise=None):  # x: (N, K*C, H, W); noise: (N, K*C, H, W) uint8 or None
        if not self.training or self.p == 0:
            return x
        if noise is not None:
            q = quantized_p(self.p)  # the p that really runs, as the JSON records it
            return x * (noise >= q * NOISE_LEVELS).to(x.dtype) * (1 / (1 - q))
        n, kc, h, w = x.shape
        fmt = torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) and kc > 1 else torch.contiguous_format
        mask = [torch.empty((n, kc // self.k, h, w), device=x.device, dtype=x.dtype, memory_format=fmt)
                .bernoulli_(1 - self.p, generator=g).div_(1 - self.p) for g in self.generators]
        return x * torch.cat(mask, 1)


class PackedNet(nn.Sequential):
    """K Nets side by side: convolutions with groups=K (model k owns channel block k), BatchNorm per channel
    (so per model), dropout per model. Input (N, K, 28, 28): channel k is model k's image; output (N, K, 10).

    Grouped convolutions rather than vmap: BatchNorm's running statistics are updated in place, which
    torch.func.vmap does not allow without rewriting the layers, and one grouped kernel per layer is what
    lets a GPU run 20 tiny models at the cost of one.
    """

    def __init__(self, k, dropout=0.05, norm="bn", virtual_batch=8):
        layers = OrderedDict()
        one = Net(dropout, norm, virtual_batch)  # the template: K of its layers side by side
        for name, layer in one.named_children():
            if isinstance(layer, nn.Conv2d):
                layer = nn.Conv2d(layer.in_channels * k, layer.out_channels * k, layer.kernel_size,
                                  padding=layer.padding, groups=k, bias=False)
            elif isinstance(layer, nn.BatchNorm2d):
                layer = type(layer)(layer.num_features * k) if norm == "bn" else \
                    GhostBatchNorm2d(layer.num_features * k, virtual_batch)
            elif isinstance(layer, nn.Dropout):
                layer = PackedDropout(dropout, k)
            elif isinstance(layer, nn.Flatten):
                layer = nn.Sequential(nn.Flatten(), nn.Unflatten(1, (k, 10)))  # (N, K*10, 1, 1) -> (N, K, 10)
            layers[name] = layer
        super().__init__(layers)
        self.k, self.generators = k, None
        self.drop_shapes = dropout_shapes(one)  # [(C, H, W)] of one model

    def forward(self, x, noise=None):
        """x: (N, K, 28, 28) -> (N, K, 10); noise: PackedNet.draw_noise's list, one tensor per dropout layer."""
        noise = iter(noise or ())
        for layer in self:
            x = layer(x, next(noise, None)) if isinstance(layer, PackedDropout) else layer(x)
        return x

    def set_dropout_generators(self, generators):
        self.generators = generators
        for m in self.modules():
            if isinstance(m, PackedDropout):
                m.generators = generators

    def draw_noise(self, n):
        """Random bytes for every dropout layer of one step: per model one bulk draw from its own generator
        (one row of `raw`), split into its layers' (N, C, H, W), then the K models side by side along channels."""
        k, shapes = len(self.generators), self.drop_shapes
        sizes = [n * c * h * w for c, h, w in shapes]
        raw = torch.empty(k, -(-sum(sizes) // 7), dtype=torch.int64, device=self.generators[0].device)
        for row, g in zip(raw, self.generators):
            row.random_(generator=g)
        # random_() draws int64 in [0, 2^63): its top byte (the 8th, little-endian) has 7 random bits, skip it
        raw = raw.view(torch.uint8).view(k, -1, 8)[:, :, :7].reshape(k, -1)[:, :sum(sizes)]
        return [t.reshape(k, n, c, h, w).transpose(0, 1).reshape(n, k * c, h, w)
                for t, (c, h, w) in zip(raw.split(sizes, 1), shapes)]


def dropout_shapes(net):
    """(C, H, W) of the activations each Dropout of a Net sees, in forward order."""
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
             for m in net.modules() if isinstance(m, nn.Dropout)]
    with torch.no_grad():
        net.eval()(torch.zeros(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    return shapes


def pack(state_dicts):
    """K Net state_dicts -> one PackedNet state_dict: every tensor concatenated along its first dimension."""
    return {key: (torch.cat([sd[key] for sd in state_dicts]) if state_dicts[0][key].dim() else state_dicts[0][key])
            for key in state_dicts[0]}


def unpack(state_dict, k):
    """A PackedNet state_dict -> K state_dicts loadable by a plain Net()."""
    out = [{} for _ in range(k)]
    for key, t in state_dict.items():
        for i, part in enumerate(t.chunk(k) if t.dim() else [t] * k):
            out[i][key] = part.contiguous().clone()
    return out


def weight_norms(net):
    """Per model, {conv1: ||w||_2, ..., conv9: ...} of the convolution weights (float64, on the CPU)."""
    per_layer = {name.split(".")[0]: p.detach().double().reshape(net.k, -1).norm(dim=1).tolist()
                 for name, p in net.named_parameters() if p.dim() == 4}
    return [{name: norms[i] for name, norms in per_layer.items()} for i in range(net.k)]


NEAR_ZERO = 0.01  # a weight is "near zero" when |w| < 1% of the largest |w| of its own layer


def near_zero_fraction(state_dict, rel=NEAR_ZERO):
    """Fraction of all convolution weights with |w| < rel x the largest |w| of their own layer."""
    convs = [w for w in state_dict.values() if w.dim() == 4]
    small = sum((w.abs() < rel * w.abs().max()).sum().item() for w in convs)
    return small / sum(w.numel() for w in convs)


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def summary(model, input_shape=(1, 1, 28, 28)):
    """The layer table as text: one row per layer with its output shape and parameter count, then the total."""
    rows, hooks = [], []
    for name, layer in model.named_children():
        hooks.append(layer.register_forward_hook(
            lambda m, i, o, name=name: rows.append((f"{type(m).__name__}-{name}", list(o.shape[1:]),
                                                    count_params(m)))))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(input_shape))
    model.train(was_training)
    for h in hooks:
        h.remove()
    lines = [f"{'Layer (type)':>24} {'Output Shape':>18} {'Param #':>9}", "=" * 53]
    lines += [f"{name:>24} {str(shape):>18} {n:>9,}" for name, shape, n in rows]
    lines += ["=" * 53, f"Total params: {count_params(model):,}"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(Net()))
