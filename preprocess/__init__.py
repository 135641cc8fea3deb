"""detrec.preprocess: everything about turning an image/annotation tree into records."""
