"""Voting: soft and hard, weighted, and the error independent members would give."""

import math

import pytest
import torch

from imagefit.evaluation.voting import combine, disagreement, independent_error


def test_independent_error_is_the_binomial_majority():
    e = 0.2
    assert independent_error(e, 3) == pytest.approx(1 - (1 - e) ** 3 - math.comb(3, 2) * (1 - e) ** 2 * e)
    assert independent_error(e, 1) == pytest.approx(e) and independent_error(e, 5) < independent_error(e, 3)


def test_hard_voting_counts_votes_and_breaks_ties_by_probability():
    a = torch.tensor([[0.6, 0.4, 0.0], [0.9, 0.1, 0.0]])
    b = torch.tensor([[0.1, 0.9, 0.0], [0.6, 0.4, 0.0]])
    c = torch.tensor([[0.0, 0.45, 0.55], [0.0, 0.3, 0.7]])
    hard = combine([a, b, c], "hard").argmax(1)
    assert hard.tolist() == [1, 0]  # image 0: one vote each, class 1 has the highest mean probability
    assert combine([a, b, c], "soft").argmax(1).tolist() == [1, 0]
    assert torch.allclose(combine([a, b, c], "soft").exp().sum(1), torch.ones(2))
    assert disagreement([a.argmax(1), b.argmax(1), c.argmax(1)]) == pytest.approx((1 + 0.5 + 1) / 3)


def test_weighted_hard_vote_follows_the_heavier_member():
    a, b, c = (torch.tensor([[0.9, 0.1]]), torch.tensor([[0.2, 0.8]]), torch.tensor([[0.3, 0.7]]))
    assert combine([a, b, c], "hard").argmax(1).item() == 1
    assert combine([a, b, c], "hard", [5.0, 1.0, 1.0]).argmax(1).item() == 0
