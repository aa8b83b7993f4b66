"""Pretrained weights: where they come from, how each source's layers map to fcn_jax's.

catalogue      every weights file fcn_jax knows by name: URLs, checksum, what it is
cache          download once, verify, convert, cache; mirrors; several processes
convert        a file of any layout -> variables; the converter CLI
converted      converted weights folders; taking weights into a model
torchvision    torchvision's VGG-16(-BN), ImageNet ResNets, fcn_resnet50/101
pytorch_fcn    pytorch-fcn's ports of the Caffe FCNs and VGG-16
keras          Keras' VGG-16 .h5
mindspore      the MindSpore FCN-8s tutorial's network
torch_file     .pth files read without PyTorch
mindspore_file .ckpt files read without MindSpore
layouts        tensor layouts and the checks every format shares
"""
