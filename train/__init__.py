"""detrec.train: everything about consuming detrec records for training."""
