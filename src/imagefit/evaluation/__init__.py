"""Judging models: `evaluate` (a model's scores over a loader; one bundle or an ensemble of bundles on a split),
`metrics` (accuracy, per-class figures, the confusion matrix, calibration), `voting` (how ensemble members combine,
and the error independent members would give) and `report` (the error-analysis page).

May import: the bottom modules and data; never training.
"""
