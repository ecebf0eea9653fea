"""Phase-recognition scores: top-1, macro-F1, per-phase precision/recall/F1 and the confusion matrix."""

from __future__ import annotations

import numpy as np


def scores(truth: np.ndarray, predicted: np.ndarray, phases: list[str]) -> dict:
    """Scores of integer labels; macro-F1 averages the phases that occur in `truth` or `predicted`.

    A phase never predicted has precision 0 (sklearn's zero_division=0 convention).
    """
    truth, predicted = np.asarray(truth, int), np.asarray(predicted, int)
    n = len(phases)
    confusion = np.zeros((n, n), int)
    np.add.at(confusion, (truth, predicted), 1)
    per_phase, f1s = {}, []
    for k, phase in enumerate(phases):
        tp, support, called = confusion[k, k], confusion[k].sum(), confusion[:, k].sum()
        precision = tp / called if called else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_phase[phase] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                            "support": int(support)}
        if support or called:
            f1s.append(f1)
    return {"top1": float((truth == predicted).mean()) if len(truth) else 0.0,
            "macro_f1": float(np.mean(f1s)) if f1s else 0.0, "count": int(len(truth)),
            "per_phase": per_phase, "confusion": confusion.tolist()}


def segment_votes(probabilities: np.ndarray, groups: list[str]) -> tuple[list[str], np.ndarray]:
    """(segment ids, the label of each segment): its clips' mean class probabilities, argmax."""
    order = list(dict.fromkeys(groups))
    index = {g: i for i, g in enumerate(order)}
    sums = np.zeros((len(order), probabilities.shape[1]))
    np.add.at(sums, [index[g] for g in groups], probabilities)
    return order, sums.argmax(1)
