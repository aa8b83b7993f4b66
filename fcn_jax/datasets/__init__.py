"""Segmentation datasets."""
