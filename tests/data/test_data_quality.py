"""Quality classifier's held-out report: precision/recall of removal computed as defined (checked
by counting), and a classifier trained with a held-out share separates unseen good and junk text."""

from __future__ import annotations

import random

import numpy as np

from openqwen.data.quality import precision_recall, train_with_heldout


def test_precision_recall_by_counting():
    scores = np.array([0.9, 0.2, 0.7, 0.1, 0.4, 0.8])
    labels = np.array([1, 0, 1, 0, 1, 0])  # removed (< 0.5): items 1, 3, 4 -> two bad, one good
    r = precision_recall(scores, labels)
    assert r["precision"] == 2 / 3 and r["recall"] == 2 / 3 and r["good_kept"] == 2 / 3
    assert (r["heldout_good"], r["heldout_bad"]) == (3, 3)


def test_train_with_heldout_separates_unseen_text():
    rng = random.Random(0)
    vocab = ("the river ran past the old mill and the children went down to the water in the morning to gather "
             "stones that the current had left on the banks while the miller watched from his window").split()
    good = [" ".join(vocab[i % len(vocab):] + vocab[: i % len(vocab)]) + f". Day {i} ended quietly."
            for i in range(120)]
    rng.shuffle(good)
    clf, report = train_with_heldout(good, heldout=0.25, seed=0)
    assert report["heldout_good"] == 30 and report["heldout_bad"] == 30
    assert report["precision"] >= 0.9 and report["recall"] >= 0.9 and report["good_kept"] >= 0.9
    assert clf.score(["buy now click here " * 20])[0] < 0.5
