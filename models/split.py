"""Split: train on the past, evaluate on the weeks that follow.

Three windows, counted back from the last interaction (`end`), in whole UTC days:

    start ........ validation_start ........ test_start ........ end
    |  fit (validation run)  | validation   |
    |  fit (test run)                       | test                |
    |  fit (the published model)                                  |

The validation window tunes the blend and decides publication; the test window, never seen by
either decision, gives the reported figures; the published model is then fitted on everything.
On the full UCI Online Retail history (ending 2011-12-09 12:50) the defaults (30 + 30 days)
give validation 2011-10-10..2011-11-08 and test 2011-11-09..2011-12-09.

`EvalSet` is one window made ready for evaluation: the customers known to the training run who
bought something in the window, the candidate items (every item of the training run), what each
customer bought in the window (the truth), what they bought before (excluded for "new items"),
and the ages of their earlier purchases (for the repeat signal of the blend).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .data import DAY_S, PURCHASE_TYPES, Events, Interactions


@dataclass(frozen=True)
class Windows:
    start: float
    validation_start: float
    test_start: float
    end: float                 # the last interaction's time (inclusive)

    def as_dict(self) -> dict:
        iso = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat()  # noqa: E731
        return {k: iso(v) for k, v in (("start", self.start), ("validation_start", self.validation_start),
                                        ("test_start", self.test_start), ("end", self.end))}


def _midnight(t: float) -> float:
    return np.floor(t / DAY_S) * DAY_S


def windows(first: float, last: float, *, test_days: int, validation_days: int,
            test_start: str | None = None) -> Windows:
    """Test = from midnight UTC `test_days` days before the day of `last`, through `last` (so
    the day of `last` is extra: 30 days back from 2011-12-09 12:50 is 2011-11-09 00:00), or from
    the ISO date `test_start`; validation = the `validation_days` days before."""
    if test_start:
        d = dt.date.fromisoformat(test_start)
        ts = dt.datetime(d.year, d.month, d.day, tzinfo=dt.timezone.utc).timestamp()
    else:
        ts = _midnight(last) - test_days * DAY_S
    return Windows(first, ts - validation_days * DAY_S, ts, last)


@dataclass(frozen=True)
class EvalSet:
    user_ids: list[str]               # evaluated customers, row order
    item_ids: list[str]               # candidate items, column order
    truth: sp.csr_matrix              # bool U×I: bought in the window
    bought: sp.csr_matrix             # bool U×I: bought in the training window
    purchase_ages: list[dict[int, list[float]]]   # per customer: item column → ages (days) of earlier purchases
    at: float                         # the window's start: "now" for ages and recency

    @property
    def n_users(self) -> int:
        return len(self.user_ids)


def eval_set(train: Events, window: Events, fitted: Interactions, at: float) -> EvalSet:
    """The customers of `fitted` (the training run's matrix) who bought one of its items in
    `window`; purchases outside the candidate items are not counted."""
    col = np.full(len(train.item_ids), -1, np.int64)
    col[fitted.items] = np.arange(len(fitted.items))
    row = np.full(len(train.user_ids), -1, np.int64)
    row[fitted.users] = np.arange(len(fitted.users))

    def pairs(ev: Events) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m = ev.is_type(*PURCHASE_TYPES) & (ev.item >= 0)
        r, c = row[ev.user[m]], col[ev.item[m]]
        ok = (r >= 0) & (c >= 0)
        return r[ok], c[ok], ev.ts[m][ok]

    wr, wc, _ = pairs(window)
    users = np.unique(wr)
    urow = np.full(len(fitted.users), -1, np.int64)
    urow[users] = np.arange(len(users))
    shape = (len(users), len(fitted.items))
    truth = sp.csr_matrix((np.ones(len(wr), bool), (urow[wr], wc)), shape=shape)
    truth.sum_duplicates()
    truth.data[:] = True
    tr, tc, tts = pairs(train)
    keep = urow[tr] >= 0
    tr, tc, tts = urow[tr[keep]], tc[keep], tts[keep]
    bought = sp.csr_matrix((np.ones(len(tr), bool), (tr, tc)), shape=shape)
    bought.sum_duplicates()
    bought.data[:] = True
    ages: list[dict[int, list[float]]] = [dict() for _ in users]
    for r, c, t in zip(tr.tolist(), tc.tolist(), ((at - tts) / DAY_S).tolist()):
        ages[r].setdefault(c, []).append(t)
    return EvalSet([train.user_ids[fitted.users[u]] for u in users],
                   [train.item_ids[i] for i in fitted.items], truth, bought, ages, at)
