"""Many runs at once: `search` (Optuna studies), `crossval` (k-fold) and `ensemble` (members by seed, bagging,
snapshot or boosting, then evaluated as one).

May import: everything below the API (training, evaluation, data and the bottom modules).
"""
