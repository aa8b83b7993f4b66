"""``python -m fcn_jax.convert`` and the converter's functions, where they were before the
weights package: ``fcn_jax.weights`` holds them, one module per source format."""

from fcn_jax.weights.convert import (  # noqa: F401
    LAYOUTS,
    NORMALIZATION,
    backbone_model,
    load_backbone,
    read_backbone,
    run,
)
from fcn_jax.weights.converted import (  # noqa: F401
    COLLECTIONS,
    backbone_name,
    check_fits,
    load_meta,
    load_weights,
    merge_into,
    save_weights,
)
from fcn_jax.weights.layouts import ConversionError, abstract_variables  # noqa: F401
from fcn_jax.weights.mindspore import from_mindspore_checkpoint, mindspore_model  # noqa: F401
from fcn_jax.weights.pytorch_fcn import from_torch_state_dict, model_for  # noqa: F401
from fcn_jax.weights.torchvision import from_torchvision_segmentation  # noqa: F401

if __name__ == "__main__":
    run()
