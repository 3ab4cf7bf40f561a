"""Training side of bnserve: datasets, the BatchNorm network and its training loop.

This package needs torch; the service never imports it.
"""
