"""aer's Optuna sweeper for Hydra (`hydra/sweeper=aer_optuna`); see aer.search."""
