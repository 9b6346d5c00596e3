"""Patient-level train / validation / test split, seeded and reproducible.

Split by patient, never by row or by prefix: prefixes of one stay are strongly correlated,
and a stay in both training and test would flatter every metric. The split is a pure
function of the sorted ids, the seed and the fractions (or the fold), and the checkpoint
stores the test ids as well, so `training.evaluate` can score exactly the held-out stays later.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Split", "split_patients"]


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]  # ids the model and the normaliser are fitted on
    val: tuple[str, ...]  # early stopping and temperature scaling
    test: tuple[str, ...]  # held out; scored by training.evaluate on the same data
    seed: int  # the seed that drew it
    fractions: tuple[float, float, float]  # train, val, test
    fold: tuple[int, int] | None = None  # (k, K): test is fold k of K (cross-validation)

    def to_dict(self) -> dict[str, Any]:
        """JSON for the checkpoint: the recipe and the test ids (train/val follow from it)."""
        return {"seed": self.seed, "fractions": list(self.fractions),
                "fold": list(self.fold) if self.fold else None,
                "n_train": len(self.train), "n_val": len(self.val),
                "test_ids": list(self.test)}


def split_patients(ids: Sequence[str], seed: int,
                   fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
                   fold: tuple[int, int] | None = None) -> Split:
    """Shuffle the sorted ids with `seed` and cut them at the given fractions.

    With `fold` = (k, K) the test split is instead the k-th of K near-equal parts of the
    same shuffle (K-fold cross-validation: the K tests partition the patients, whatever k
    runs where), and the rest is cut into train and validation at the ratio of the first two
    fractions. Raises ValueError when there are too few stays to give train and validation
    at least one stay each (and test one where its fraction is > 0 or folds are asked for).
    """
    unique = sorted({str(i) for i in ids})
    n = len(unique)
    order = np.random.default_rng(seed).permutation(n)
    shuffled = [unique[i] for i in order]
    if fold is not None:
        k, n_folds = fold
        if not 0 <= k < n_folds or n_folds < 2:
            raise ValueError(f"fold must be (k, K) with K >= 2 and 0 <= k < K, got {fold}")
        parts = np.array_split(np.arange(n), n_folds)
        in_test = set(parts[k].tolist())
        test = [shuffled[i] for i in parts[k]]
        rest = [shuffled[i] for i in range(n) if i not in in_test]
        n_val = int(round(fractions[1] / (fractions[0] + fractions[1]) * len(rest)))
        n_train = len(rest) - n_val
        if n_train < 1 or n_val < 1 or not test:
            raise ValueError(f"{n} patients are too few for {n_folds} folds "
                             f"(train {n_train}, val {n_val}, test {len(test)})")
        return Split(train=tuple(sorted(rest[:n_train])), val=tuple(sorted(rest[n_train:])),
                     test=tuple(sorted(test)), seed=seed, fractions=fractions, fold=fold)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    n_train = n - n_val - n_test
    if n_train < 1 or n_val < 1 or (fractions[2] > 0 and n_test < 1):
        raise ValueError(f"{n} patients are too few to split {fractions} "
                         f"(train {n_train}, val {n_val}, test {n_test})")
    return Split(
        train=tuple(sorted(shuffled[:n_train])),
        val=tuple(sorted(shuffled[n_train:n_train + n_val])),
        test=tuple(sorted(shuffled[n_train + n_val:])),
        seed=seed,
        fractions=fractions,
    )
