"""
A MONAI training loop with a ``lowrank`` net
============================================

A ``lowrank`` net is a plain ``nn.Module``, so MONAI's transforms, losses, inferers and metrics
work with it unchanged. This loop trains a small 3-D Swin Factorizer on the brain MRI template
that ships with ``lowrank`` (background, CSF, grey matter, white matter) for a few steps — enough
to show the pieces fitting together, far too few for a good segmentation (``lowrank train`` runs
the full recipe).
"""

import matplotlib.pyplot as plt
import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DeepSupervisionLoss, DiceCELoss
from monai.metrics import DiceMetric
from monai.transforms import Compose, RandCropByPosNegLabeld, RandFlipd

from lowrank import build_net
from lowrank.data import load_template, split_slab

torch.manual_seed(0)

# %%
# Data: the template, minus a held-out axial slab for validation
# ---------------------------------------------------------------

volume = load_template()
train_pieces, val_volume = split_slab(volume)
train_volume = max(train_pieces, key=lambda piece: piece.image.shape[-1])  # the larger piece
sample = {"image": train_volume.image.astype(np.float32), "label": train_volume.label.astype(np.float32)}
crop = Compose(
    [
        RandCropByPosNegLabeld(
            ["image", "label"], "label", spatial_size=(24, 24, 24), pos=2, neg=1, num_samples=2
        ),
        RandFlipd(["image", "label"], prob=0.5, spatial_axis=0),
    ]
)
crop.set_random_state(0)
print("train", sample["image"].shape, "validation", val_volume.image.shape, "classes", volume.classes)

# %%
# The net, the loss and the optimizer
# -----------------------------------
# In training mode a net with ``deep_supervision=2`` returns two logit maps, full and half
# resolution; MONAI's ``DeepSupervisionLoss`` weighs and sums the loss over them.

net = build_net(
    "swin_factorizer(channels=[8, 16, 32], head_dim=4, patch=4, deep_supervision=2, pos_embed_size=none)",
    in_channels=1,
    out_channels=4,
    spatial_dims=3,
)
loss_fn = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True), weights=[1.0, 0.5])
optimizer = torch.optim.AdamW(net.parameters(), lr=2e-2, weight_decay=1e-2)

losses = []
net.train()
for _ in range(12):
    patches = crop(sample)
    x = torch.stack([torch.as_tensor(p["image"]) for p in patches])
    y = torch.stack([torch.as_tensor(p["label"]) for p in patches])
    loss = loss_fn(net(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(f"loss: step 0 {losses[0]:.3f} -> step {len(losses) - 1} {losses[-1]:.3f}")

# %%
# Validation: sliding-window inference and Dice
# ---------------------------------------------
# In eval mode the net returns one tensor, which is what ``sliding_window_inference`` expects.

net.eval()
image = torch.as_tensor(val_volume.image[None].astype(np.float32))
label = torch.as_tensor(val_volume.label[None].astype(np.int64))
with torch.no_grad():
    logits = sliding_window_inference(
        image, roi_size=(24, 24, 24), sw_batch_size=2, predictor=net, overlap=0.25
    )
prediction = logits.argmax(1, keepdim=True)
dice = DiceMetric(include_background=False, reduction="none", num_classes=4)(prediction, label)
print("Dice CSF / GM / WM after 12 steps:", [round(v, 3) for v in dice[0].tolist()])

# %%
fig, axes = plt.subplots(1, 3, figsize=(8, 2.8))
z = image.shape[-1] // 2
for ax, (title, picture) in zip(
    axes, [("image", image[0, 0]), ("label", label[0, 0]), ("prediction", prediction[0, 0])]
):
    ax.imshow(picture[..., z].T, cmap="gray" if title == "image" else "viridis", origin="lower")
    ax.set_title(title)
    ax.axis("off")
fig.tight_layout()
