"""bookcounter: count books in photos with a SAM-assisted annotation-and-training loop.

This package holds what every part shares: settings, the dataset store, image decoding, mask
encoding, locks, background processes and atomic writes. It imports no other package of the
project (docs/layers.md); the ``bookcounter`` command line lives at the top, in ``flows/main.py``.
"""
