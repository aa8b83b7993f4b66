"""Writes mindspore_fcn8s_tiny.ckpt and .npz: the MindSpore FCN-8s tutorial's network, run by
MindSpore itself. Not a test: the tests read what it wrote. Regenerate in a separate venv:

    python3 -m venv /tmp/ms && /tmp/ms/bin/pip install mindspore==2.10.0 "numpy<2"
    /tmp/ms/bin/python tests/data/make_mindspore_fixture.py

The network is the tutorial's (mindspore docs, tutorials/application/source_zh_cn/cv/
fcn8s.ipynb) at narrow widths (conv1 2 channels, fc6/fc7 8, 3 classes), with random weights
and BatchNorm statistics; the .npz holds two inputs (32x64 and 64x32, NCHW) and MindSpore's
logits for them in eval mode.

mindspore_fcn8s_tiny_train.npz is training, as the model zoo trains (nn.Momentum 0.9 with
weight decay, mean cross-entropy over the non-void pixels): a uint8 RGB batch of 2 (64x96),
its labels (some 255), the logits of one forward pass with set_train(True) and the moving
statistics it left, then the parameters and statistics after 3 steps on that batch, each from
the checkpoint's state.
"""

import pathlib

import mindspore as ms
import numpy as np
from mindspore import nn

HERE = pathlib.Path(__file__).resolve().parent
BASE, FC, CLASSES = 2, 8, 3
# The model zoo's normalisation (default_config.yaml): BGR images, these means and stds.
MEAN_BGR, STD_BGR = (103.53, 116.28, 123.675), (57.375, 57.120, 58.395)
# The training steps: learning rate, momentum and weight decay of nn.Momentum.
LR, MOMENTUM, WEIGHT_DECAY, STEPS = 0.05, 0.9, 1e-4, 3


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
    np.savez(HERE / "mindspore_fcn8s_tiny_train.npz", **train_mode(net, rng))


def state(net):
    return {p.name: p.asnumpy() for p in net.get_parameters()}


def train_mode(net, rng):
    """Logits and moving statistics of one train-mode forward pass, then the state after
    STEPS training steps, both from the checkpoint's state."""
    checkpoint = ms.load_checkpoint(str(HERE / "mindspore_fcn8s_tiny.ckpt"))
    images = rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, (2, 64, 96)).astype(np.int32)
    labels[rng.random(labels.shape) < 0.3] = 255
    x = (images[..., ::-1].astype(np.float32) - np.float32(MEAN_BGR)) / np.float32(STD_BGR)
    x = ms.Tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    net.set_train(True)
    out = {"images": images, "labels": labels.astype(np.uint8), "logits": net(x).asnumpy()}
    out["lr_momentum_weight_decay_steps"] = np.array([LR, MOMENTUM, WEIGHT_DECAY, STEPS])
    out.update({f"forward/{k}": v for k, v in state(net).items() if "moving" in k})
    ms.load_param_into_net(net, checkpoint)
    optimizer = nn.Momentum(net.trainable_params(), LR, MOMENTUM, weight_decay=WEIGHT_DECAY)
    loss = nn.CrossEntropyLoss(ignore_index=255)  # The mean over the non-void pixels.
    step = nn.TrainOneStepCell(nn.WithLossCell(net, loss), optimizer)
    step.set_train(True)
    for _ in range(STEPS):
        step(x, ms.Tensor(labels))
    out.update({f"steps/{k}": v for k, v in state(net).items()})
    return out


if __name__ == "__main__":
    main()
