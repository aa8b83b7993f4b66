"""Writes mindspore_fcn8s_tiny.ckpt and .npz: the MindSpore FCN-8s tutorial's network, run by
MindSpore itself. Not a test: the tests read what it wrote. Regenerate in a separate venv:

    python3 -m venv /tmp/ms && /tmp/ms/bin/pip install mindspore==2.10.0 "numpy<2"
    /tmp/ms/bin/python tests/data/make_mindspore_fixture.py

The network is the tutorial's (mindspore docs, tutorials/application/source_zh_cn/cv/
fcn8s.ipynb) at narrow widths (conv1 2 channels, fc6/fc7 8, 3 classes), with random weights
and BatchNorm statistics; the .npz holds two inputs (32x64 and 64x32, NCHW) and MindSpore's
logits for them in eval mode.
"""

import pathlib

import mindspore as ms
import numpy as np
from mindspore import nn

HERE = pathlib.Path(__file__).resolve().parent
BASE, FC, CLASSES = 2, 8, 3


def stage(cin, cout, n):
    layers = []
    for i in range(n):
        conv = nn.Conv2d(cin if i == 0 else cout, cout, 3, weight_init="xavier_uniform")
        layers += [conv, nn.BatchNorm2d(cout), nn.ReLU()]
    return nn.SequentialCell(layers)


class FCN8s(nn.Cell):
    """The tutorial's FCN8s, with its widths as arguments."""

    def __init__(self, n_class, b, f):
        super().__init__()
        self.conv1, self.pool1 = stage(3, b, 2), nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2, self.pool2 = stage(b, 2 * b, 2), nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv3, self.pool3 = stage(2 * b, 4 * b, 3), nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv4, self.pool4 = stage(4 * b, 8 * b, 3), nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv5, self.pool5 = stage(8 * b, 8 * b, 3), nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv6 = nn.SequentialCell(
            nn.Conv2d(8 * b, f, 7, weight_init="xavier_uniform"), nn.BatchNorm2d(f), nn.ReLU()
        )
        self.conv7 = nn.SequentialCell(
            nn.Conv2d(f, f, 1, weight_init="xavier_uniform"), nn.BatchNorm2d(f), nn.ReLU()
        )
        self.score_fr = nn.Conv2d(f, n_class, 1, weight_init="xavier_uniform")
        self.upscore2 = nn.Conv2dTranspose(
            n_class, n_class, 4, stride=2, weight_init="xavier_uniform"
        )
        self.score_pool4 = nn.Conv2d(8 * b, n_class, 1, weight_init="xavier_uniform")
        self.upscore_pool4 = nn.Conv2dTranspose(
            n_class, n_class, 4, stride=2, weight_init="xavier_uniform"
        )
        self.score_pool3 = nn.Conv2d(4 * b, n_class, 1, weight_init="xavier_uniform")
        self.upscore8 = nn.Conv2dTranspose(
            n_class, n_class, 16, stride=8, weight_init="xavier_uniform"
        )

    def construct(self, x):
        p1 = self.pool1(self.conv1(x))
        p2 = self.pool2(self.conv2(p1))
        p3 = self.pool3(self.conv3(p2))
        p4 = self.pool4(self.conv4(p3))
        p5 = self.pool5(self.conv5(p4))
        x7 = self.conv7(self.conv6(p5))
        u2 = self.upscore2(self.score_fr(x7))
        u4 = self.upscore_pool4(self.score_pool4(p4) + u2)
        return self.upscore8(self.score_pool3(p3) + u4)


def main():
    ms.set_seed(0)
    rng = np.random.default_rng(0)
    net = FCN8s(CLASSES, BASE, FC)
    for p in net.get_parameters():  # Non-trivial BatchNorm parameters and statistics.
        v = p.asnumpy()
        if p.name.endswith("moving_variance"):
            v = rng.uniform(0.5, 2.0, v.shape)
        elif p.name.endswith("gamma"):
            v = rng.uniform(0.5, 1.5, v.shape)
        elif p.name.endswith(("beta", "moving_mean")):
            v = rng.normal(0.0, 0.2, v.shape)
        p.set_data(ms.Tensor(v.astype(np.float32)))
    net.set_train(False)
    ms.save_checkpoint(net, str(HERE / "mindspore_fcn8s_tiny.ckpt"))
    arrays = {}
    for name, shape in (("wide", (1, 3, 32, 64)), ("tall", (1, 3, 64, 32))):
        x = rng.normal(0.0, 1.0, shape).astype(np.float32)
        arrays[f"{name}_input"] = x
        arrays[f"{name}_logits"] = net(ms.Tensor(x)).asnumpy()
    np.savez(HERE / "mindspore_fcn8s_tiny.npz", **arrays)


if __name__ == "__main__":
    main()
