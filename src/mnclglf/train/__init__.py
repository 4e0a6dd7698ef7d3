"""Training loops: self-supervised pretraining, the linear probe, and their helpers."""
