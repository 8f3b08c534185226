"""
NMF component maps
==================

In a Factorizer block each matrix is ``X ≈ U Vᵀ``: ``V`` holds a non-negative weight per voxel of
a window, and put back in space each of its columns is a *map* of where that component is active
(the Factorizer paper's interpretability figures). :func:`lowrank.controls.component_maps` records
these maps with forward hooks during one forward pass, without touching the model.
"""

import matplotlib.pyplot as plt
import torch

from lowrank import build_net
from lowrank.controls import component_maps
from lowrank.data import load_template

# %%
# An axial slice of the shipped brain MRI template, and a 2-D Swin Factorizer.

volume = load_template()
z = volume.image.shape[-1] // 2
x = torch.from_numpy(volume.image[None, ..., z].copy())  # (1, 1, 75, 93)
torch.manual_seed(0)
net = build_net(
    "swin_factorizer(channels=[16, 32, 64], head_dim=4, patch=4, pos_embed_size=none)",
    in_channels=1,
    out_channels=4,
    spatial_dims=2,
).eval()

# %%
# One entry per factorizer block, ``(B, heads × rank, *S_block)`` at the block's own resolution.

maps = component_maps(net, x)
for name, m in maps.items():
    print(f"{name:<18} {tuple(m.shape)}")

# %%
# The first block's four maps next to the input. The net is untrained, so its maps mostly follow
# intensity; after training (``lowrank train`` draws them into ``components.png``) they separate
# tissues.

first = maps["stages.0.blocks.0"][0]
fig, axes = plt.subplots(1, 1 + first.shape[0], figsize=(2.2 * (1 + first.shape[0]), 2.6))
axes[0].imshow(x[0, 0].T, cmap="gray", origin="lower")
axes[0].set_title("input")
for k, ax in enumerate(axes[1:]):
    ax.imshow(first[k].T, cmap="magma", origin="lower")
    ax.set_title(f"component {k}")
for ax in axes:
    ax.axis("off")
fig.tight_layout()
