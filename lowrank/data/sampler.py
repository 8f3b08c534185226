"""Deterministic patch sampling: patch ``i`` of step ``s`` is a pure function of ``(seed, s, i)``.

This is what makes ``--resume`` exact and multi-process training equal to one process: a
resumed run regenerates exactly the batches it would have drawn, and under
``DistributedDataParallel`` rank ``r`` of ``W`` takes patches ``r, r + W, r + 2W, …`` of the
global batch (a ``DistributedSampler``-style split) without any shared random state.

Example:
    >>> from lowrank.data import PatchSampler, load_template, split_slab
    >>> train, _ = split_slab(load_template())
    >>> sampler = PatchSampler(train, patch=(16, 16, 16), seed=0)
    >>> image, label = sampler.batch(step=0, batch_size=2)
    >>> image.shape, label.shape
    (torch.Size([2, 1, 16, 16, 16]), torch.Size([2, 1, 16, 16, 16]))
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .transforms import train_transform
from .volumes import Volume

__all__ = ["PatchSampler"]


def _plain(x) -> torch.Tensor:
    """A MONAI MetaTensor (or array) as a plain tensor."""
    if hasattr(x, "as_tensor"):
        x = x.as_tensor()
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)


class PatchSampler:
    """Random training patches from a list of labelled volumes.

    Args:
        volumes: labelled volumes (``image (C, X, Y, Z)``, ``label (1, X, Y, Z)``).
        patch: patch size, 3 values for 3-D or 2 values for 2-D (axial slices, the ``z`` axis
            becomes the slice index).
        seed: base seed; patches depend only on ``(seed, step, index)``.
        pos, neg: foreground/background weights of patch centres (MONAI ``RandCropByPosNegLabeld``).
        augment: left–right flip and intensity jitter.

    Raises:
        ValueError: no volume, a volume without a label, a patch of the wrong length.
    """

    def __init__(
        self,
        volumes: Sequence[Volume],
        patch: Sequence[int],
        *,
        seed: int = 0,
        pos: float = 2.0,
        neg: float = 1.0,
        augment: bool = True,
    ):
        from monai.transforms import SpatialPad
        from monai.transforms.utils import map_binary_to_indices

        if not volumes:
            raise ValueError("PatchSampler needs at least one training volume")
        patch = tuple(int(p) for p in patch)
        if len(patch) not in (2, 3) or min(patch) < 1:
            raise ValueError(f"patch={patch}: give 3 sizes (3-D) or 2 sizes (2-D axial slices), each >= 1")
        self.dims = len(patch)
        self.patch = patch
        self.seed = int(seed)
        crop = patch if self.dims == 3 else (*patch, 1)
        self.items = []
        for vol in volumes:
            if vol.label is None:
                raise ValueError(f"volume {vol.name!r} has no label map")
            if vol.image.ndim != 4:
                raise ValueError(f"volume {vol.name!r}: expected (C, X, Y, Z), got {vol.image.shape}")
            pad = SpatialPad(spatial_size=crop, mode="constant")
            image = np.asarray(_plain(pad(vol.image)))
            label = np.asarray(_plain(pad(vol.label)))
            fg, bg = map_binary_to_indices(label > 0, None, 0.0)
            self.items.append(
                {"image": image, "label": label.astype(np.int64), "fg": np.asarray(fg), "bg": np.asarray(bg)}
            )
        weights = np.array([max(len(it["fg"]), 1) for it in self.items], dtype=np.float64)
        self.weights = weights / weights.sum()
        self.transform = train_transform(
            crop, pos=pos, neg=neg, flip=augment, scale=0.1 * augment, shift=0.1 * augment
        )
        self.in_channels = int(self.items[0]["image"].shape[0])

    def sample(self, step: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch ``index`` of the global batch of ``step``.

        Returns:
            ``image (C, *patch)`` float32 and ``label (1, *patch)`` int64.
        """
        seeds = np.random.SeedSequence([self.seed, int(step), int(index)]).generate_state(2)
        rng = np.random.default_rng(seeds[0])
        item = self.items[int(rng.choice(len(self.items), p=self.weights))]
        self.transform.set_random_state(seed=int(seeds[1]))
        out = self.transform(dict(item))
        out = out[0] if isinstance(out, list) else out
        image = _plain(out["image"]).float()
        label = _plain(out["label"]).long()
        if self.dims == 2:
            image, label = image[..., 0], label[..., 0]
        return image.contiguous(), label.contiguous()

    def batch(
        self, step: int, batch_size: int, *, rank: int = 0, world_size: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's share of the global batch of ``step``.

        Args:
            step: training step (0-based).
            batch_size: the per-rank batch size; the global batch is ``batch_size * world_size``.
            rank, world_size: this process's place in a distributed run.

        Returns:
            ``image (batch_size, C, *patch)``, ``label (batch_size, 1, *patch)``.
        """
        pairs = [self.sample(step, i) for i in range(rank, batch_size * world_size, world_size)]
        images, labels = zip(*pairs)
        return torch.stack(images), torch.stack(labels)
