"""bookcounter: count books in photos with a SAM-assisted annotation-and-training loop.

This package holds what every part shares: settings, image decoding, mask encoding and the
``bookcounter`` command line that assembles the subcommands of each part.
"""
