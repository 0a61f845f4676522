"""The train layer: one trial's work on its workers (plain torch loop, Ray Train adapter); no Tune."""
