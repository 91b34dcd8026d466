"""The variant table and the weight penalties added to the loss.

Which parameters are penalised: the convolution weights only, as in the seed's intent. BatchNorm's affine
parameters are left out on purpose: beta is a shift with no notion of "small is simple", and an L1 pull on
gamma prunes whole channels (network slimming), a different experiment. Every convolution but the last feeds
ReLU -> BatchNorm, so the output ignores its scale: there a penalty can change only the effective step
lr/‖w‖² (van Laarhoven 2017); on conv9, the classifier, it limits the logits (confirm.py tests both routes).
"""
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Variant:
    l1: float = 0.0              # lambda_1 in  lambda_1 * sum |w|
    l2: float = 0.0              # lambda_2 in  lambda_2 * sum w^2
    norm: str = "bn"             # "bn" or "gbn" (Ghost BatchNorm)
    penalized: str = "all"       # which convolutions the penalty covers: "all" (conv1-9) or "conv9" (the classifier)
    match_norms: str = ""        # a variant's name: after every step, rescale conv1-8 to its norms (same seed, same pack)


# chosen by `make lambdas` on the validation split (rules.LAMBDA_RULE): results/recipe.json holds the runs and the
# choice, REPORT.md shows them, and a test fails where these differ from it
L1 = 3e-5
L2 = 3e-4

VARIANTS = {
    "none": Variant(),
    "l1": Variant(l1=L1),
    "l2": Variant(l2=L2),
    "l1l2": Variant(l1=L1, l2=L2),
    "gbn": Variant(norm="gbn"),
    "gbn_l1l2": Variant(l1=L1, l2=L2, norm="gbn"),
    # the mechanism control (confirm.py): the effective step of l2 without its penalty, and its penalty on the
    # classifier alone; trained with l2 in one pack, at the λ2 the plan fixes
    "none_normmatch": Variant(match_norms="l2"),
    "l2_conv9": Variant(l2=L2, penalized="conv9"),
}
SCALE_INVARIANT = 8  # conv1-8 feed ReLU -> BatchNorm: the output does not depend on their scale; conv9 does


def penalized(model):
    """The parameters the penalties cover: convolution weights (4-D tensors, conv1..conv9), never BatchNorm's."""
    return [p for name, p in model.named_parameters() if name.endswith("weight") and p.dim() == 4]


def layer_mask(which, n_layers=9):
    """Per convolution, whether the penalty of a variant with penalized=`which` covers it."""
    if which not in ("all", "conv9"):
        raise ValueError(f"penalized={which!r}: 'all' or 'conv9'")
    return [which == "all" or i == n_layers - 1 for i in range(n_layers)]


def penalty(params, l1=0.0, l2=0.0, k=None):
    """l1 * sum|w| + l2 * sum w^2 over params, as a differentiable scalar tensor (zero when both are zero).

    With k, the params hold k packed models stacked along their first dimension and l1, l2 may be (k,)
    tensors, one lambda per model: the result is then a (k,) tensor, model i's penalty at position i. A
    (len(params), k) tensor gives each layer its own lambdas (0 where a model's penalty leaves it out).
    A lambda of None or 0 adds nothing (not even a zero term).
    """
    rows = (k or 1, -1)
    total = params[0].new_zeros(rows[0])
    for lam, size in ((l1, lambda p: p.abs()), (l2, lambda p: p.pow(2))):
        if not torch.is_tensor(lam) and not lam:  # None or 0 adds nothing; a tensor's values are never read (a sync)
            continue
        if torch.is_tensor(lam) and lam.dim() == 2:  # per layer
            total = total + sum(lam_i * size(p.reshape(rows)).sum(1) for lam_i, p in zip(lam, params))
        else:  # one lambda for every layer: factored out, as every committed run computed it
            total = total + lam * sum(size(p.reshape(rows)).sum(1) for p in params)
    return total if k else total[0]


# -----------------------------------------------------------------------------
# a pack's λ's, and the norm matching of the mechanism control

@torch.no_grad()
def match_norms(net, opt, members, partners):
    """Rescale each of conv1-8 of model members[i] to the norm of that layer in model partners[i]. Behind ReLU ->
    BatchNorm this leaves what the model computes unchanged and changes only its effective step lr/‖w‖². The
    momentum buffer holds past gradients, and a gradient at αw is g/α: it is divided by α with the weights it
    belongs to, so the next step continues as if the weights had always had the new scale."""
    k = net.k
    for p in penalized(net)[:SCALE_INVARIANT]:
        norms = p.reshape(k, -1).norm(dim=1)                                                   # (K,)
        scale = torch.ones_like(norms)
        scale[members] = norms[partners] / norms[members]
        rows = scale.repeat_interleave(p.shape[0] // k)[:, None, None, None]                  # per output channel
        p.mul_(rows)
        buf = opt.state[p].get("momentum_buffer")
        if buf is not None:
            buf.div_(rows)


def norm_partners(members, device):
    """(member indices, partner indices) of the pack's norm-matched models, each with the member of its
    match_norms variant and its seed; None where no model matches norms."""
    where = {(m.variant, s): i for i, (m, s) in enumerate(members)}
    pairs = [(i, where.get((m.match_norms, s))) for i, (m, s) in enumerate(members) if m.match_norms]
    if not pairs:
        return None
    missing = [f"{members[i][0].name} seed {members[i][1]}" for i, j in pairs if j is None]
    if missing:
        raise ValueError(f"{', '.join(missing)} match the norms of a model that is not in the pack")
    return tuple(torch.tensor(side, device=device) for side in zip(*pairs))


def lambdas(members, key, device, dtype):
    """The pack's λ for one penalty: None where no model has it; (K,) with one λ per model where every model's
    penalty covers every convolution; else (9, K), 0 where a model's penalty leaves a layer out."""
    lam = [getattr(m, key) for m, _ in members]
    if not any(lam):
        return None
    if all(m.penalized == "all" for m, _ in members):
        return torch.tensor(lam, device=device, dtype=dtype)
    masks = [layer_mask(m.penalized) for m, _ in members]
    return torch.tensor([[l * mask[i] for l, mask in zip(lam, masks)] for i in range(len(masks[0]))], device=device,
                        dtype=dtype)
