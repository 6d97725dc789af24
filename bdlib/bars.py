"""The "ACC within N points" comparison every bar in the collection uses.

Why one place: accuracies are fractions of a test set (18 / 600 = 3 points), and the float
difference of two of them can land a hair above the exact value (0.9483… − 0.9183… =
0.030000000000000027), so a plain ``<=`` failed a drop of exactly 3 points: the committed
Blended victim of ``figures/90_attacks.csv`` (stop 29) was marked as missing the attack bar
that way. Every bar (the attack bar in :func:`bdlib.metrics.meets_bar`, the removal bar of
the tables, the budget answer, the poisoning-rate table) compares through :func:`keeps_acc`.
"""
from __future__ import annotations

#: float slack when judging "ACC within N points": a drop of exactly N points passes
ACC_SLACK = 1e-9


def keeps_acc(acc_drop, points: float):
    """Whether an ACC drop (a float, an array or a Series) is within ``points``, to :data:`ACC_SLACK`."""
    return acc_drop <= points + ACC_SLACK
