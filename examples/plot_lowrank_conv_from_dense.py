"""
Low-rank convolutions from a trained dense conv
===============================================

``from_conv`` decomposes the kernel of a trained ``nn.Conv1d/2d/3d`` into a CP, Tucker or
tensor-train convolution (with tensorly), keeping its stride, padding, dilation, groups and bias.
Here a small dense net is trained first; then each 3×3 conv is replaced by its CP decomposition
at several ranks, and the compressed nets are compared with the original, before any fine-tuning.
"""

import copy

import matplotlib.pyplot as plt
import torch
from torch import nn

from lowrank import get_part

torch.manual_seed(0)
CPConv = get_part("conv", "cp_conv")


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# %%
# A dense net, trained
# --------------------
# Three 3×3 convs that learn to find bright discs in noise (a stand-in for your pretrained model:
# load its ``state_dict`` instead).


def batch(n: int = 16, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centers = torch.randint(8, size - 8, (n, 2))
    masks = ((yy - centers[:, 0, None, None]) ** 2 + (xx - centers[:, 1, None, None]) ** 2 < 36).long()
    return masks[:, None].float() + 0.6 * torch.randn(n, 1, size, size), masks


dense = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(16, 16, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(16, 16, 3, padding=1),
    nn.ReLU(),
    nn.Conv2d(16, 2, 1),
)
optimizer = torch.optim.AdamW(dense.parameters(), lr=3e-3)
for _ in range(40):
    images, masks = batch()
    loss = nn.functional.cross_entropy(dense(images), masks)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(f"trained: loss {loss.item():.3f}, {count(dense):,} parameters")

# %%
# Decompose its 3×3 convs
# -----------------------
# The first conv has one input channel: nothing to gain, it stays dense (as in the thesis's
# low-rank Res-U-Net, whose first level is dense).


def compress(model: nn.Sequential, rank: int) -> nn.Sequential:
    low = copy.deepcopy(model)
    for i in (2, 4):
        low[i] = CPConv.from_conv(model[i], rank=rank)
    return low


test_images, test_masks = batch(n=32)


def accuracy(model: nn.Module) -> float:
    with torch.no_grad():
        return (model(test_images).argmax(1) == test_masks).float().mean().item()


with torch.no_grad():
    reference = dense(test_images)
rows = []
for rank in (1, 2, 4, 8, 16, 144):
    low = compress(dense, rank)
    with torch.no_grad():
        error = ((low(test_images) - reference).norm() / reference.norm()).item()
    rows.append((rank, count(low), error, accuracy(low)))
    print(f"CP rank {rank:>3}: {count(low):>6,} parameters, output error {error:.3f}, ", end="")
    print(f"pixel accuracy {rows[-1][3]:.3f}")
print(f"dense      : {count(dense):>6,} parameters, pixel accuracy {accuracy(dense):.3f}")

# %%
# At the full CP rank (``C_in · 3 · 3 = 144``) the decomposition is exact (and larger than the
# dense kernel). A trained kernel is far
# from random, so a small rank already keeps most of the accuracy; fine-tune the compressed net
# for a few steps to recover the rest.

fig, ax = plt.subplots(figsize=(5.5, 3.2))
ax.plot([r[1] for r in rows], [r[3] for r in rows], marker="o", label="CP-compressed")
ax.axhline(accuracy(dense), color="gray", linestyle="--", label="dense")
for rank, params, _, acc in rows:
    ax.annotate(f"R={rank}", (params, acc), textcoords="offset points", xytext=(4, -10), fontsize=7)
ax.set_xscale("log")
ax.set_xlabel("parameters")
ax.set_ylabel("pixel accuracy")
ax.legend(fontsize=8)
fig.tight_layout()
