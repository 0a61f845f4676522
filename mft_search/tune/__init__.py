"""The tune layer: Optuna studies, Tune stages, selection, baselines and the sweep's order."""
