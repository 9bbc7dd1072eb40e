"""Fitting a model: `train` (the Trainer: one loop, checkpoints, resume, early stopping, tracking, the bundle at the
end), `optim` (parameter groups, optimizers, schedules, lookahead), `ema` (the weights' moving average), `lr_finder`
(the range test), `transfer` (fine-tuning and the linear probe), `distributed` (torchrun DDP) and `progress`.

May import: the bottom modules (errors, config, files, checkpoint, allocator, tracking, plots, preprocessing,
runtime, seeds, models, bundle), data, and evaluation's scoring and metrics.
"""
