"""The core: pure torch/transformers, no Ray, no Optuna: masking, mask files, data, evaluators."""
