"""The papers' configurations as specs (the nets' defaults differ in deep supervision only).

Every net returns one tensor in training unless ``deep_supervision=k > 1`` opts in (see
:data:`lowrank.nets.skeleton.DEEP_SUPERVISION_RULE`); the published models used deep
supervision, so their specs say so here. Build one with
``build_net(PAPER_SPECS["swin_factorizer_brats"], 4, 3)``.
"""

from __future__ import annotations

__all__ = ["PAPER_SPECS"]

#: name → spec of the papers' configurations (parameter counts for the given channels).
PAPER_SPECS: dict[str, str] = {
    # Factorizer paper, BraTS (4 → 3): 5,856,233 parameters
    "swin_factorizer_brats": "swin_factorizer(deep_supervision=3)",
    # Factorizer paper, ISLES (2 → 1): 7,372,515 parameters
    "swin_factorizer_isles": (
        "swin_factorizer(head_dim=4, patch=4, mlp_ratio=4, pos_embed_size=64, deep_supervision=3)"
    ),
    # the Factorizer paper's U-Net baseline (4 → 3): 28,705,897 parameters
    "unet": "unet(deep_supervision=3)",
    # thesis ch. 6 Pre-U-Net (4 → 3): 28,881,417 parameters
    "pre_unet": "pre_unet(deep_supervision=3)",
    # thesis ch. 8 (4 → 4): one head; 92,219,344 and 21,069,034 parameters
    "resunet": "resunet",
    "lowrank_resunet": "lowrank_resunet",
}
