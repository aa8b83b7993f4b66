"""FCN semantic segmentation in JAX/Flax."""
