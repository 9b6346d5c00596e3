"""Baselines the model has to beat: NEWS2, last-value logistic regression, SAPS-I, oracle.

- NEWS2 (Royal College of Physicians, 2017) from the latest values in the window: what a
  ward uses today, with no training at all.
- Logistic regression on the last observed value of every measured variable, a missing
  indicator each, and the static descriptors: the best a model can do without trends. It is
  fitted on the checkpoint's training split when that data is at hand, else cross-fitted
  (5-fold, out-of-fold predictions) on the evaluation cohort itself — never scored on the
  patients it was fitted on.
- SAPS-I, where the patients table carries it (PhysioNet 2012 does).
- The oracle: the generator's true risk, the ceiling for any model on synthetic data.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from models.catalogue import MEASUREMENTS
from models.news2 import news2_from_observations

__all__ = ["LastValueModel", "last_value_matrix", "news2_scores", "patient_column"]


def news2_scores(observations: pd.DataFrame, ids: Sequence[str],
                 cutoff_hour: float) -> np.ndarray:
    """(N,) NEWS2 from the latest values at or before `cutoff_hour`; 0 without any row."""
    table = news2_from_observations(observations, cutoff_hour=cutoff_hour)
    return table["score"].reindex([str(i) for i in ids]).fillna(0).to_numpy(np.float64)


def patient_column(patients: pd.DataFrame, column: str, ids: Sequence[str]) -> np.ndarray:
    """(N,) numeric column of the patients table in `ids` order; NaN where absent."""
    if column not in patients.columns:
        return np.full(len(ids), np.nan)
    table = patients.set_index(patients["patient_id"].astype(str)) \
        if "patient_id" in patients.columns else patients
    return pd.to_numeric(table[column], errors="coerce").reindex(
        [str(i) for i in ids]).to_numpy(np.float64)


def last_value_matrix(observations: pd.DataFrame, patients: pd.DataFrame,
                      ids: Sequence[str], cutoff_hour: float,
                      variables: Sequence[str] = MEASUREMENTS) -> pd.DataFrame:
    """Per patient: last value of each variable before the cut-off, NaN where never seen,
    plus age, sex (1 = male) and weight."""
    obs = observations[(observations["time_hours"] < cutoff_hour)
                       & observations["variable"].isin(list(variables))]
    obs = obs.sort_values("time_hours", kind="stable")
    last = obs.groupby([obs["patient_id"].astype(str), "variable"])["value"].last().unstack()
    last = last.reindex(index=[str(i) for i in ids], columns=list(variables))
    sex = patient_column(patients.assign(sex=patients["sex"].astype(str).str.lower().map(
        {"male": 1.0, "m": 1.0, "1": 1.0, "1.0": 1.0, "female": 0.0, "f": 0.0, "0": 0.0,
         "0.0": 0.0})) if "sex" in patients.columns else patients, "sex", ids)
    last["age"] = patient_column(patients, "age", ids)
    last["sex"] = sex
    last["weight"] = patient_column(patients, "weight", ids)
    return last.astype(np.float64)


class LastValueModel:
    """Median imputation + missing indicators + standardised logistic regression."""

    def __init__(self) -> None:
        self.columns: list[str] = []
        self.medians: pd.Series | None = None
        self.pipe: Pipeline = make_pipeline(StandardScaler(),
                                            LogisticRegression(max_iter=2000, C=1.0))

    def _design(self, raw: pd.DataFrame) -> np.ndarray:
        assert self.medians is not None
        raw = raw.reindex(columns=self.columns)
        missing = raw.isna().to_numpy(np.float64)
        filled = raw.fillna(self.medians).fillna(0.0).to_numpy(np.float64)
        return np.concatenate([filled, missing], axis=1)

    def fit(self, raw: pd.DataFrame, y: np.ndarray) -> LastValueModel:
        self.columns = [c for c in raw.columns if raw[c].notna().any()]
        self.medians = raw[self.columns].median()
        self.pipe.fit(self._design(raw), y)
        return self

    def predict(self, raw: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.pipe.predict_proba(self._design(raw))[:, 1], dtype=np.float64)

    @classmethod
    def cross_fitted(cls, raw: pd.DataFrame, y: np.ndarray, seed: int = 0) -> np.ndarray:
        """Out-of-fold probabilities from 5-fold stratified cross-fitting."""
        model = cls()
        model.columns = [c for c in raw.columns if raw[c].notna().any()]
        model.medians = raw[model.columns].median()
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
        pred = cross_val_predict(model.pipe, model._design(raw), y, cv=folds,
                                 method="predict_proba")
        return np.asarray(pred[:, 1], dtype=np.float64)
