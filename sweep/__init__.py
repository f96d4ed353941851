"""`phonerec sweep`: a hyperparameter search over `phonerec train` (Optuna), each trial a
time-budgeted training run in its own process, pruned on its per-epoch dev PER."""
