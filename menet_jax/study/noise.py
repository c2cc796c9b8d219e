"""Fig. 10 (docs/method.md §8): what ME does to adversarial noise, as one picture.

For the first `NUM_IMAGES` test images: the clean image, its adversarial example (BPDA+EOT PGD on
the defended classifier at eval.eps, the eval.eot budget, best iterate kept) and their difference;
then the same three after ME, both images rebuilt from the same mask (one draw at the inference
p), so the second difference is what ME leaves of the noise. Under each image, the predicted class
and its probability: the bare network before ME, the network on the reconstruction (ME-Net's
prediction with that mask) after. Differences are drawn around grey, scaled up by one factor per
image (shown in the picture).
"""

from __future__ import annotations

NUM_IMAGES = 4


def _predict(logits):
    import numpy as np

    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return p.argmax(-1), p.max(-1)


def compute(config, model_dir: str, num_images: int = NUM_IMAGES) -> dict:
    """The images, reconstructions and predictions of the figure, as numpy arrays."""
    import jax
    import numpy as np

    from menet_jax import attacks, checkpoint, input_pipeline, rng

    clf = checkpoint.load(model_dir)
    run, ev = clf.config, config.eval
    images, labels = input_pipeline.load_split(run.dataset, "test", data_dir=run.data_dir or None)
    x = input_pipeline.to_float(images[:num_images])
    y = labels[:num_images].astype(np.int32)
    k_attack, k_mask = jax.random.split(rng.named(rng.stream(run.seed, rng.ATTACK), "noise"))
    steps = int(ev.eot.steps)
    step = 5 * ev.eps / steps if ev.eot.step_size is None else float(ev.eot.step_size)
    x_adv = attacks.pgd(clf.logits_fn("menet", gradient=ev.gradient), x, y, k_attack,
                        eps=float(ev.eps), step_size=step, steps=steps,
                        eot_samples=int(ev.eot.samples), keep_best=True)  # fmt: skip
    out = {"label": y, "clean": x, "adversarial": np.asarray(x_adv)}
    out["me_clean"] = np.asarray(clf.preprocess(x, k_mask))
    out["me_adversarial"] = np.asarray(clf.preprocess(x_adv, k_mask))
    for name in ("clean", "adversarial", "me_clean", "me_adversarial"):
        out[f"{name}_pred"], out[f"{name}_prob"] = _predict(clf.network(out[name]))
    out["noise"] = out["adversarial"] - x
    out["me_noise"] = out["me_adversarial"] - out["me_clean"]
    out["params"] = {"eps": float(ev.eps), "steps": steps, "step_size": step,
                     "eot_samples": int(ev.eot.samples), "gradient": ev.gradient,
                     "inference_p": clf.inference_p, "step": clf.step}  # fmt: skip
    return out


def _show(ax, img, title):
    import numpy as np

    img = np.clip(img, 0, 1)
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def draw(config, model_dirs: dict, png_path: str):
    """The picture study's runner: writes the PNG; returns (header, rows, data) for the table."""
    import numpy as np

    from menet_jax.study.output import pyplot

    f = compute(config, model_dirs["model"])
    plt = pyplot()
    n = len(f["label"])
    fig, axes = plt.subplots(n, 6, figsize=(9, 1.7 * n), squeeze=False)
    rows, data = [], {"params": f["params"], "images": []}
    for i in range(n):
        linf = float(np.abs(f["noise"][i]).max())
        linf_me = float(np.abs(f["me_noise"][i]).max())
        scale = 0.5 / max(linf, linf_me, 1e-8)

        def pred(name, i=i):
            return f"{int(f[name + '_pred'][i])} ({float(f[name + '_prob'][i]):.2f})"

        _show(axes[i, 0], f["clean"][i], f"clean: {pred('clean')}")
        _show(axes[i, 1], f["adversarial"][i], f"adversarial: {pred('adversarial')}")
        _show(axes[i, 2], 0.5 + scale * f["noise"][i], f"noise x{scale:.1f}")
        _show(axes[i, 3], f["me_clean"][i], f"ME(clean): {pred('me_clean')}")
        _show(axes[i, 4], f["me_adversarial"][i], f"ME(adv.): {pred('me_adversarial')}")
        _show(axes[i, 5], 0.5 + scale * f["me_noise"][i], f"ME noise x{scale:.1f}")
        l2 = float(np.sqrt((f["noise"][i] ** 2).sum()))
        l2_me = float(np.sqrt((f["me_noise"][i] ** 2).sum()))
        rows.append([i, int(f["label"][i]), pred("clean"), pred("adversarial"), pred("me_clean"),
                     pred("me_adversarial"), f"{linf:.3f}", f"{linf_me:.3f}", f"{l2:.2f}",
                     f"{l2_me:.2f}"])  # fmt: skip
        data["images"].append({
            "index": i, "label": int(f["label"][i]), "linf_noise": linf, "linf_me_noise": linf_me,
            "l2_noise": l2, "l2_me_noise": l2_me,
            **{f"{k}_{w}": (int if w == "pred" else float)(f[f"{k}_{w}"][i])
               for k in ("clean", "adversarial", "me_clean", "me_adversarial")
               for w in ("pred", "prob")},
        })  # fmt: skip
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    header = ["test image", "label", "clean: net", "adversarial: net", "ME(clean): net",
              "ME(adv.): net", "L-inf noise", "L-inf after ME", "L2 noise",
              "L2 after ME"]  # fmt: skip
    return header, rows, data
