"""`python -m menet_jax.bench train --config=configs/mnist_demo.py`: training throughput.

Prints `name: value` lines: images/s of the real jitted train step without ME (the offline /
vanilla step) and with online ME (the solver inside the step), the ME share of the online step,
and, for the MNIST CNN and the CIFAR ResNet-18 when PyTorch is importable, the same network's
SGD step in PyTorch on this machine's CPU and the ratio. Inputs are random images of the
dataset's shape (throughput does not depend on the pixels), so no dataset has to be prepared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from menet_jax import cli, input_pipeline, preprocess, recipe, train
from menet_jax.bench import common
from menet_jax.config import ConfigError, load_config


def _time_steps(step_fn, train_state, batch, steps: int) -> float:
    """Seconds for `steps` train steps after one compiling step."""
    train_state, m = step_fn(train_state, batch, jnp.asarray(0, jnp.int32))  # compile
    jax.block_until_ready(m)

    def run(train_state):
        for s in range(1, steps + 1):
            train_state, m = step_fn(train_state, batch, jnp.asarray(s, jnp.int32))
        return m

    seconds, _ = common.timed(run, train_state)
    return seconds


def jax_images_per_s(config, *, online: bool, steps: int) -> float:
    """Images per second of the jitted train step (with ME inside it when `online`)."""
    info = input_pipeline.get_info(config.dataset, data_dir=config.data_dir)
    config = config.copy_and_resolve_references()
    config.adv.enabled = False
    model = recipe.create_model(config, info)
    optimizer = recipe.create_optimizer(model, config, num_train=50_000)
    graphdef, train_state = nnx.split((model, optimizer))
    mesh = train.make_mesh()
    train_state = jax.device_put(train_state, NamedSharding(mesh, P()))
    step_fn = train.make_train_step(config, graphdef, mesh, online=online, num_train=50_000)
    b = config.batch_size
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (b, *info.image_shape), dtype=np.uint8),
        "label": rng.integers(0, info.num_classes, (b,)).astype(np.int32),
        "image_idx": np.arange(b, dtype=np.int32),
        "copy_idx": (np.arange(b) % config.me.num_masks).astype(np.int32),
    }
    batch = train.to_global(batch, NamedSharding(mesh, P("data")))
    return b * steps / _time_steps(step_fn, train_state, batch, steps)


def _torch_lenet(nn, info):
    """Madry's MNIST CNN (menet_jax.models.lenet) in PyTorch."""
    h, w, c = info.image_shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), 1024),
        nn.ReLU(),
        nn.Linear(1024, info.num_classes),
    )


def _torch_resnet18(nn, info, width: int):
    """The CIFAR ResNet-18 of menet_jax.models.resnet (the authors' kuangliu network) in PyTorch."""

    def conv_bn(cin, cout, k, stride):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(
                *conv_bn(cin, cout, 3, stride), nn.ReLU(), *conv_bn(cout, cout, 3, 1)
            )
            project = stride != 1 or cin != cout
            self.shortcut = nn.Sequential(*conv_bn(cin, cout, 1, stride)) if project else None

        def forward(self, x):
            skip = x if self.shortcut is None else self.shortcut(x)
            return nn.functional.relu(self.body(x) + skip)

    layers, cin = [*conv_bn(info.image_shape[2], width, 3, 1), nn.ReLU()], width
    for stage, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
        for i in range(2):
            layers.append(Block(cin, cout, 2 if stage > 0 and i == 0 else 1))
            cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, info.num_classes)]
    return nn.Sequential(*layers)


def torch_images_per_s(config, *, steps: int) -> float | None:
    """The same network and SGD step in PyTorch on this CPU (the authors' framework).

    Covers the MNIST CNN and the CIFAR ResNet-18 (at config.model_width); None for other models
    or when PyTorch is not installed.
    """
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    info = input_pipeline.get_info(config.dataset, data_dir=config.data_dir)
    torch.manual_seed(0)
    if config.model == "lenet":
        net = _torch_lenet(nn, info)
    elif config.model == "resnet18":
        net = _torch_resnet18(nn, info, int(config.model_width))
    else:
        return None
    net.train()
    opt = torch.optim.SGD(
        net.parameters(), lr=config.learning_rate, momentum=0.9, weight_decay=config.weight_decay
    )
    b = config.batch_size
    h, w, c = info.image_shape
    x = torch.rand(b, c, h, w)
    y = torch.randint(0, info.num_classes, (b,))

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    step()
    seconds, _ = common.timed(lambda: [step() for _ in range(steps)])
    return b * steps / seconds


def _parse(argv: list[str]):
    """The options and the config; raises cli.UsageError on an option the run cannot use,
    ConfigError on a config file that cannot be loaded."""
    args = (
        cli.Options("python -m menet_jax.bench train", __doc__)
        .define("string", "config", "configs/mnist_demo.py")
        .define("integer", "steps", 30)
        .define("integer", "batch_size", 0, "0: the config's")
        .define("string", "method", "", "ME method of the online step (preprocess.METHODS)")
        .parse(argv)
    )
    if args.steps < 1 or args.batch_size < 0:
        raise cli.UsageError(
            f"--steps={args.steps} must be >= 1 and --batch_size={args.batch_size} >= 0."
        )
    if args.method and args.method not in preprocess.METHODS:
        raise cli.UsageError(
            f"--method={args.method!r} must be one of {', '.join(preprocess.names())}."
        )
    config = load_config(args.config)
    if args.batch_size:
        config.batch_size = args.batch_size
    if args.method:
        config.me.method = args.method
    return args, config


def main(argv: list[str]) -> int:
    """Runs the benchmark; returns a process exit code (2 for a bad option, 1 for a config file
    that cannot be loaded, as `menet_jax.main` exits)."""
    try:
        args, config = _parse(argv)
    except cli.UsageError as e:
        return common.fail(e)
    except ConfigError as e:
        return cli.fail(str(e))
    _, count, kind = common.devices()
    common.report("device", f"{count} x {kind}")
    common.report("config", f"{args.config} model={config.model} batch={config.batch_size}")
    plain = jax_images_per_s(config, online=False, steps=args.steps)
    common.report("train_images_per_s_no_me", f"{plain:.1f}")
    if config.me.method != "none":
        online = jax_images_per_s(config, online=True, steps=args.steps)
        common.report(f"train_images_per_s_online_{config.me.method}", f"{online:.1f}")
        common.report("online_me_share_of_step", f"{1 - online / plain:.3f}")
        common.report("online_me_step_overhead", f"{plain / online - 1:.3f}")
    ref = torch_images_per_s(config, steps=args.steps)
    if ref is not None:
        common.report("torch_train_images_per_s_no_me", f"{ref:.1f}")
        common.report("jax_over_torch_ratio", f"{plain / ref:.2f}")
    return 0
