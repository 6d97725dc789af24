"""The second half of the smoke-profile regression test (tests/test_regression.py says why
it is split): the attacks not in its ``FIRST_HALF``, computed afresh in an empty store."""
from test_regression import ATTACKS, FIRST_HALF, check_against_reference, smoke_metrics


def test_smoke_metrics_of_the_other_attacks_match_reference(tmp_path):
    attacks = tuple(a for a in ATTACKS if a[0] not in FIRST_HALF)
    check_against_reference(smoke_metrics(tmp_path, attacks, with_badnets=False), tmp_path)
