"""Which images DDB repaints: the K lowest-ERM-loss training images of each class.

Low ERM loss is the paper's proxy for the majority group, so no group label is read.
The ERM probabilities of these sources also give Psi_i, the mean probability of class
i over the K sources of class i (pruning condition 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


@torch.no_grad()
def erm_scores(
    model: torch.nn.Module,
    dataset: torch.utils.data.Dataset,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    num_workers: int = 0,
    desc: str = "ERM losses",
) -> tuple[np.ndarray, np.ndarray]:
    """Per-example cross-entropy loss and softmax probabilities of ``model`` on ``dataset``.

    ``dataset`` yields ``(x, y, ...)`` in its order; the model is put in eval mode.
    """
    model.eval().to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    losses, probs = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", dynamic_ncols=True):
        x, y = batch[0].to(device), torch.as_tensor(batch[1]).to(device)
        logits = model(x).float()
        losses.append(F.cross_entropy(logits, y, reduction="none").cpu())
        probs.append(logits.softmax(1).cpu())
    return torch.cat(losses).numpy(), torch.cat(probs).numpy()


def select_sources(
    y: np.ndarray, losses: np.ndarray, probs: np.ndarray, k: Sequence[int], ids: Sequence[str]
) -> pd.DataFrame:
    """The ``k[c]`` lowest-loss examples of each class ``c`` (ties: lower position first).

    Columns: ``position`` (in the training split), ``source_id``, ``source_class``,
    ``rank`` (0 = lowest loss), ``loss``, ``p_source`` (ERM probability of the true class).
    """
    y = np.asarray(y)
    n_classes = probs.shape[1]
    if len(k) != n_classes:
        raise ValueError(f"ddb.sources.k: need one K per class ({n_classes}), got {list(k)}")
    rows = []
    for c in range(n_classes):
        pool = np.flatnonzero(y == c)
        order = pool[np.lexsort((pool, losses[pool]))][: int(k[c])]
        for rank, pos in enumerate(order):
            rows.append({"position": int(pos), "source_id": str(ids[pos]), "source_class": c, "rank": rank,
                         "loss": float(losses[pos]), "p_source": float(probs[pos, c])})
    return pd.DataFrame(rows, columns=["position", "source_id", "source_class", "rank", "loss", "p_source"])


def psi(sources: pd.DataFrame) -> dict[int, float]:
    """Psi_i: the mean ERM probability of class i over the sources of class i."""
    return {int(c): float(g["p_source"].mean()) for c, g in sources.groupby("source_class")}
