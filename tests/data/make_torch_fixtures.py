"""Writes tests/data/torch_fixtures/: small checkpoints saved the way the ME-Net authors saved
theirs, and PyTorch's logits for them (run once by hand where torch is installed; CI only reads
the committed files, menet_jax.torch_pickle needs no torch).

  python tests/data/make_torch_fixtures.py          # torch >= 2.0, numpy

The network is the authors' `models/resnet.py` ResNet18 (the kuangliu CIFAR ResNet), defined
below and imported as the module `models.resnet`, so each pickle names `models.resnet.ResNet`
and `models.resnet.BasicBlock` as the authors' checkpoints do. Its widths are 4/8/16/32 channels
instead of 64/128/256/512 (`WIDTH`), so the three files stay small; the architecture is
otherwise the same. Weights and BatchNorm statistics are random.

Files:
  legacy_bare.ckpt   {'model': ResNet18, 'acc', 'epoch', 'rng_state'}, legacy (non-zip)
                     serialisation, as train_adv.py saved; Parameters pickled as torch 0.4.1
                     did (`torch.nn.parameter.Parameter(tensor, requires_grad)`) and each module
                     carrying 0.4.1's `_backend` (`torch.nn.backends.thnn._get_thnn_function_
                     backend()`).
  legacy_dp.ckpt     the same dict around `nn.DataParallel(ResNet18)` (train_pure.py), legacy
                     serialisation, today's pickling of Parameters.
  zip_state_dict.pt  legacy_bare's `state_dict()` alone, zip serialisation (torch's default).
  logits.npz         images [N, 32, 32, 3] in [0, 1]; mask [N, 32, 32, 3] (0/1); for each
                     checkpoint NAME: NAME_logits (network on the images, normalised with the
                     authors' mean/std, eval mode) and NAME_me_logits (network on the authors'
                     numpy USVT reconstruction of the images under `mask`, concat layout, then
                     normalised).

`save_authors_checkpoint` is also what tests/test_convert.py calls, where torch is importable,
to check the full-width (64-channel) network.
"""

from __future__ import annotations

import copyreg
import os
import sys
import tempfile

import numpy as np

WIDTH = 4
MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.2023, 0.1994, 0.2010], np.float32).reshape(1, 3, 1, 1)

# The authors' models/resnet.py (ResNet18 part), with the stem width as an argument.
_RESNET_SOURCE = """
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super(BasicBlock, self).__init__()
        self.conv1 = nn.Conv2d(
            in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != self.expansion*planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, self.expansion*planes, kernel_size=1, stride=stride,
                          bias=False),
                nn.BatchNorm2d(self.expansion*planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, block, num_blocks, num_classes=10, width=64):
        super(ResNet, self).__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(block, width, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 2*width, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 4*width, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 8*width, num_blocks[3], stride=2)
        self.linear = nn.Linear(8*width*block.expansion, num_classes)

    def _make_layer(self, block, planes, num_blocks, stride):
        strides = [stride] + [1]*(num_blocks-1)
        layers = []
        for stride in strides:
            layers.append(block(self.in_planes, planes, stride))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        out = self.linear(out)
        return out


def ResNet18(width=64):
    return ResNet(BasicBlock, [2,2,2,2], width=width)
"""


def authors_resnet_module():
    """Imports the authors' ResNet as `models.resnet` (written to a temporary package)."""
    if "models.resnet" in sys.modules:
        return sys.modules["models.resnet"]
    root = tempfile.mkdtemp(prefix="authors_models_")
    os.makedirs(os.path.join(root, "models"))
    open(os.path.join(root, "models", "__init__.py"), "w").close()
    with open(os.path.join(root, "models", "resnet.py"), "w") as f:
        f.write(_RESNET_SOURCE)
    sys.path.insert(0, root)
    import models.resnet

    return models.resnet


def random_resnet18(width: int, seed: int):
    """The authors' ResNet18 with random weights and BatchNorm statistics, in eval mode."""
    import torch

    torch.manual_seed(seed)
    model = authors_resnet_module().ResNet18(width=width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(seed * 1000 + 7)
        model.linear.weight.normal_(0.0, 1.0)  # logits of a few units, not ~0.1
        model.linear.bias.normal_(0.0, 1.0)
    return model.eval()


class _Thnn04Backend:
    """Stands for torch 0.4.1's module `_backend`, which pickled as a call of this function."""

    def __reduce__(self):
        from torch.nn.backends import thnn

        return (thnn._get_thnn_function_backend, ())


def _parameter_04(p):
    # torch 0.4.1's Parameter.__reduce_ex__: Parameter(<tensor>, requires_grad).
    import torch

    return (torch.nn.Parameter, (p.data, p.requires_grad))


def save_authors_checkpoint(model, path: str, *, data_parallel: bool, torch04: bool) -> None:
    """torch.save of the authors' dict, legacy serialisation (train_adv.py / train_pure.py)."""
    import torch

    module = torch.nn.DataParallel(model) if data_parallel else model
    state = {
        "model": module,
        "acc": torch.tensor(87.5),
        "epoch": 199,
        "rng_state": torch.get_rng_state(),
    }
    if not torch04:
        torch.save(state, path, _use_new_zipfile_serialization=False)
        return
    for m in module.modules():
        m._backend = _Thnn04Backend()
    copyreg.dispatch_table[torch.nn.Parameter] = _parameter_04
    try:
        torch.save(state, path, _use_new_zipfile_serialization=False)
    finally:
        del copyreg.dispatch_table[torch.nn.Parameter]
        for m in module.modules():
            del m._backend


def authors_usvt(images: np.ndarray, mask: np.ndarray, svdprob: float = 0.8) -> np.ndarray:
    """train_adv.py's usvt forward (concat) on NCHW images in [0, 1] with given H x 3W masks."""
    n, c, h, w = images.shape
    out = np.zeros_like(images, dtype=np.float64)
    for i in range(n):
        img = images[i].astype(np.float64) * 2 - 1
        img = np.concatenate((np.concatenate((img[0], img[1]), axis=1), img[2]), axis=1)
        p_obs = mask[i].sum() / (h * w * c)
        u, sigma, v = np.linalg.svd(img * mask[i])
        s = np.zeros((h, w))
        for j in range(int(svdprob * h)):
            s[j][j] = sigma[j]
        s = np.concatenate((s, np.zeros((h, w * 2))), axis=1)
        est = np.clip(np.dot(np.dot(u, s), v) / p_obs, -1, 1)
        est = (est + 1) / 2
        for channel in range(c):
            out[i, channel] = est[:, channel * h : (channel + 1) * h]
    return out.astype(np.float32)


def torch_logits(model, images_nchw: np.ndarray) -> np.ndarray:
    """The network on images in [0, 1] normalised with the authors' mean and std."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy((images_nchw - MEAN) / STD)
        return model.eval()(x).numpy()


def main(out_dir: str) -> None:
    import torch

    os.makedirs(out_dir, exist_ok=True)
    rs = np.random.RandomState(0)
    images = rs.uniform(0, 1, (6, 3, 32, 32)).astype(np.float32)
    mask = rs.binomial(1, 0.5, (6, 32, 96)).astype(np.float32)  # authors' H x [R|G|B] layout
    reconstructed = authors_usvt(images, mask)
    bare, dp = random_resnet18(WIDTH, seed=1), random_resnet18(WIDTH, seed=2)
    save_authors_checkpoint(
        bare, os.path.join(out_dir, "legacy_bare.ckpt"), data_parallel=False, torch04=True
    )
    save_authors_checkpoint(
        dp, os.path.join(out_dir, "legacy_dp.ckpt"), data_parallel=True, torch04=False
    )
    torch.save(bare.state_dict(), os.path.join(out_dir, "zip_state_dict.pt"))
    arrays = {
        "images": images.transpose(0, 2, 3, 1),
        "mask": mask.reshape(6, 32, 3, 32).transpose(0, 1, 3, 2),  # -> NHWC
    }
    for name, model in (("legacy_bare", bare), ("legacy_dp", dp), ("zip_state_dict", bare)):
        arrays[f"{name}_logits"] = torch_logits(model, images)
        arrays[f"{name}_me_logits"] = torch_logits(model, reconstructed)
    np.savez_compressed(os.path.join(out_dir, "logits.npz"), **arrays)
    for name in sorted(os.listdir(out_dir)):
        print(f"{name}: {os.path.getsize(os.path.join(out_dir, name))} bytes")


if __name__ == "__main__":
    main(os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_fixtures"))
