"""detrec.core: the record contract shared by writer, reader and inspector.

Imports neither Beam nor TensorFlow (a test holds it to that), so every side can depend on it.
"""
