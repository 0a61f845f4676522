"""An experiment directory's records: results table and storage checks."""
