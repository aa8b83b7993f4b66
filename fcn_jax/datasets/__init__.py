"""Segmentation datasets.

Importing the package registers the TFDS builders, so that `tfds.builder("voc_sbd")` and
`tfds.load("voc_sbd")` find them.
"""

from fcn_jax.datasets import voc_sbd  # noqa: F401
