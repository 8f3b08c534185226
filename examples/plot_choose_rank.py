"""
Choose a rank with the Kneedle elbow
====================================

The relative reconstruction error of NMF against the rank, for non-negative matrices of known
rank 2 to 6 plus 1 % noise, and the elbow :func:`lowrank.solvers.rank_selection.kneedle` picks on
each curve (see the :doc:`rank guide </guides/rank>`).
"""

import matplotlib.pyplot as plt
import torch

from lowrank.solvers.rank_selection import kneedle, relative_errors

generator = torch.Generator().manual_seed(0)
true_ranks = [2, 3, 4, 5, 6]
X = torch.stack(
    [torch.rand(32, r, generator=generator) @ torch.rand(r, 200, generator=generator) for r in true_ranks]
)
X = X + 0.01 * X.mean() * torch.rand(X.shape, generator=generator)

ranks = list(range(1, 13))
errors = relative_errors(X, ranks)  # (5, 12): NMF with HALS, NNDSVD init
picked = kneedle(ranks, errors)
print("true rank:    ", true_ranks)
print("Kneedle picks:", picked.tolist())

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for curve, true, knee in zip(errors, true_ranks, picked):
    (line,) = ax.plot(ranks, curve, marker="o", markersize=3, label=f"true rank {true}")
    ax.plot([knee], [curve[ranks.index(int(knee))]], marker="*", markersize=14, color=line.get_color())
ax.set_yscale("log")
ax.set_xlabel("rank R")
ax.set_ylabel("relative error")
ax.legend(fontsize=8)
ax.set_title("relative error vs rank; ★ = Kneedle elbow")
fig.tight_layout()
