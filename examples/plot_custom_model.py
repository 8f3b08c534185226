"""
A custom model with ``build_block``
===================================

A Factorizer block is an ordinary ``nn.Module`` with the shape contract
``(B, C, *S) -> (B, C, *S)``, so it drops into any model. Here it sits between a convolutional
stem and a segmentation head, and the model is trained for a few steps on a toy 2-D task.
"""

import torch
from torch import nn

from lowrank import build_block

torch.manual_seed(0)

# %%
# The block
# ---------
# One spec string: the NMF layer (rank 1, 5 iterations) on 4×4 swin windows of 8-channel heads.

block = build_block(
    "factorizer(mixer=nmf(rank=1, iters=5), matricize=swin(patch=4, head_dim=8))", 32, spatial_dims=2
)
print(block.spec)
print(f"{sum(p.numel() for p in block.parameters()):,} parameters")


# %%
# The model
# ---------


class TinySegmenter(nn.Module):
    """stem conv → two Factorizer blocks → 1×1 head: ``(B, 1, H, W) -> (B, classes, H, W)``."""

    def __init__(self, classes: int = 2, width: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(1, width, kernel_size=3, padding=1)
        self.blocks = nn.Sequential(
            build_block("factorizer(matricize=swin(patch=4, head_dim=8))", width, spatial_dims=2),
            build_block("factorizer(matricize=swin(patch=4, head_dim=8))", width, spatial_dims=2),
        )
        self.head = nn.Conv2d(width, classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


model = TinySegmenter()

# %%
# Train it on discs
# -----------------
# The task: segment bright discs of random position in noise.


def batch(n: int = 8, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    centers = torch.randint(8, size - 8, (n, 2))
    masks = ((yy - centers[:, 0, None, None]) ** 2 + (xx - centers[:, 1, None, None]) ** 2 < 36).long()
    images = masks[:, None].float() + 0.5 * torch.randn(n, 1, size, size)
    return images, masks


optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
losses = []
for _ in range(30):
    images, masks = batch()
    loss = nn.functional.cross_entropy(model(images), masks)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(f"loss: step 0 {losses[0]:.3f} -> step {len(losses) - 1} {losses[-1]:.3f}")

# %%
# The result
# ----------

import matplotlib.pyplot as plt  # noqa: E402

images, masks = batch(n=3)
with torch.no_grad():
    predicted = model(images).argmax(1)
fig, axes = plt.subplots(3, 3, figsize=(6, 6))
for i in range(3):
    for ax, (title, picture) in zip(
        axes[i], [("image", images[i, 0]), ("truth", masks[i]), ("prediction", predicted[i])]
    ):
        ax.imshow(picture, cmap="gray")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
fig.tight_layout()
