"""`python -m menet_jax.bench attack`: BPDA-PGD (or BPDA-APGD) throughput through online USVT.

For Madry's MNIST CNN on 28x28x1 and a ResNet-18 on 32x32x3 (random weights: speed does not
depend on them), one jitted `pgd` call whose `logits_fn` masks each image (p), rebuilds it with
USVT and classifies it, with BPDA (the backward pass treats ME as the identity). Prints
`name: value` lines; the figure is PGD steps x images per second, i.e. forward+backward passes
(with one ME each) per second, measured on a second call after compilation. `--attack=apgd`
times `apgd` (cross-entropy, one model key per step) instead, under `attack/bpda_apgd/...`; it
evaluates x_0 .. x_N, so its figure counts (steps + 1) x images.

  python -m menet_jax.bench attack                       # 16 steps x 64 images, both models
  python -m menet_jax.bench attack --models=lenet --steps=40 --batch=256
  python -m menet_jax.bench attack --models=lenet --attack=apgd
"""

import jax
import jax.numpy as jnp

from menet_jax import cli
from menet_jax.attacks.apgd import apgd
from menet_jax.attacks.pgd import pgd
from menet_jax.bench import common
from menet_jax.config import default_config
from menet_jax.defense import DefendedClassifier

# name -> (model name, input shape, classes, mean, std, eps, step size)
_SETUPS = {
    "lenet": ("lenet", (28, 28, 1), 10, None, None, 0.3, 0.01),
    "resnet18": (
        "resnet18",
        (32, 32, 3),
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        8 / 255,
        2 / 255,
    ),
}


def bpda_logits_fn(
    model, *, p: float, num_classes: int, method: str = "usvt", channels: str = "concat"
):
    """`(x, key) -> logits` of `model` on ME(mask(x)), with the identity as ME's gradient.

    The defended classifier's own logits function (`DefendedClassifier.logits_fn`), so the
    benchmark times what the evaluation runs; its arrays travel as traced arguments.
    """
    config = default_config()
    config.me.method, config.me.channels = method, channels
    clf = DefendedClassifier.from_model(model, config, num_classes, inference_p=p)
    return clf.logits_fn("menet", gradient="bpda")


def _measure(
    name: str, *, attack: str, steps: int, batch: int, p: float, seed: int
) -> dict[str, float]:
    from flax import nnx

    from menet_jax.models import create_model

    model_name, shape, classes, mean, std, eps, step_size = _SETUPS[name]
    model = create_model(
        model_name,
        num_classes=classes,
        input_shape=shape,
        mean=mean,
        std=std,
        rngs=nnx.Rngs(seed),
    )
    model.eval()
    logits_fn = bpda_logits_fn(model, p=p, num_classes=classes)
    kx, ky = jax.random.split(jax.random.key(seed))
    x = jax.random.uniform(kx, (batch, *shape), jnp.float32)
    y = jax.random.randint(ky, (batch,), 0, classes)

    def run(key):
        if attack == "apgd":
            return apgd(logits_fn, x, y, key, eps=eps, steps=steps)
        return pgd(logits_fn, x, y, key, eps=eps, step_size=step_size, steps=steps)

    passes = steps + 1 if attack == "apgd" else steps  # forward+backward passes per image
    first, _ = common.timed(run, jax.random.key(seed + 1))
    second, _ = common.timed(run, jax.random.key(seed + 2))
    return {
        "steps_x_images_per_s": passes * batch / second,
        "seconds": second,
        "first_call_seconds": first,  # compile + one run
    }


def _parse(argv: list[str]):
    """The options and the model names; raises cli.UsageError on a value the run cannot use."""
    args = (
        cli.Options("python -m menet_jax.bench attack", __doc__.splitlines()[0])
        .define("string", "models", "lenet,resnet18", "comma-separated subset")
        .define("integer", "steps", 16, "PGD (APGD) steps")
        .define("string", "attack", "pgd", "pgd or apgd")
        .define("integer", "batch", 64, "images per attack")
        .define("float", "p", 0.5, "observation probability of ME")
        .define("integer", "seed", 0)
        .parse(argv)
    )
    names = [n for n in args.models.split(",") if n]
    if args.attack not in ("pgd", "apgd"):
        raise cli.UsageError(f"--attack must be pgd or apgd, got {args.attack!r}.")
    unknown = [n for n in names if n not in _SETUPS]
    if unknown or not names:
        raise cli.UsageError(
            f"--models must be a subset of {','.join(_SETUPS)}, got {args.models!r}."
        )
    if args.steps < 1 or args.batch < 1 or not 0 < args.p <= 1:
        raise cli.UsageError(
            f"--steps and --batch must be >= 1 and --p in (0, 1]; got --steps={args.steps} "
            f"--batch={args.batch} --p={args.p}."
        )
    return args, names


def main(argv: list[str]) -> int:
    """Runs the benchmark; returns a process exit code (2 for a bad option)."""
    try:
        args, names = _parse(argv)
    except cli.UsageError as e:
        return common.fail(e)
    backend, count, _ = common.devices()
    common.report("attack/backend", f"{backend} ({count} devices)")
    config = f"steps={args.steps} batch={args.batch} p={args.p} me=usvt bpda=1"
    if args.attack == "apgd":
        config += " attack=apgd loss=ce eot=1"
    common.report("attack/config", config)
    for name in names:
        result = _measure(
            name, attack=args.attack, steps=args.steps, batch=args.batch, p=args.p, seed=args.seed
        )
        for key, value in result.items():
            common.report(f"attack/bpda_{args.attack}/{name}/{key}", f"{value:.6g}")
    return 0
