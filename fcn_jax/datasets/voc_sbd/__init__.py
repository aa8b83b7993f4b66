"""The "voc_sbd" TFDS dataset (PASCAL VOC 2012 + SBD); importing it registers the builder."""

from .voc_sbd_dataset_builder import CLASS_NAMES, NUM_CLASSES, SPLITS, VOID_LABEL, Builder

__all__ = ["CLASS_NAMES", "NUM_CLASSES", "SPLITS", "VOID_LABEL", "Builder"]
