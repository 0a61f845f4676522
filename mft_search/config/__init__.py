"""The sweep's YAML schema, validated once at the door; the search space without Optuna."""
