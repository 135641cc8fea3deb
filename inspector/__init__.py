"""detrec.inspector: looks inside shards (counts, integrity, labels, pictures) through detrec.core."""
