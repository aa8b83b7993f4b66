"""Test set-up: 8 simulated CPU devices, so sharding tests run on one host.

XLA reads XLA_FLAGS when the backend starts, so this runs before any test
imports jax. Single-device tests build their own one-device mesh.
"""
import os
import pathlib
import sys

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # `configs` is imported as a package by config files.
