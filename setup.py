"""Shim for tools that want a `setup.py`; everything is declared in pyproject.toml.

Apache Beam's `--setup_file` stages the package by building an sdist. Beam 2.77 accepts a
`pyproject.toml` there too, but only when the `build` package is installed; with this file it
falls back to `python setup.py sdist`, which needs nothing beyond setuptools. So
`detrec preprocess --runner DataflowRunner --setup_file ./setup.py` works from a plain venv.
"""

from setuptools import setup

setup()
