"""Tests of menet_jax.evaluation.plots: the PNGs of a results.json-shaped report and its
TensorBoard log, read back from the event files and checked against the numbers put in."""

from __future__ import annotations

import copy
import glob
import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image

from menet_jax.evaluation import plots

MAIN_EPS = 0.3
N_ATTACKS = 13 + 6 + 2  # named rows, sweep rows, rows with eps null
SWEEP = {0.0: 0.96, 0.25: 0.9, 0.5: 0.74, 1.0: 0.55, 2.0: 0.21, 4.0: 0.04}


def _row(acc, eps, counted, group, n=500, **extra):
    half = 0.03
    return {
        "accuracy": acc,
        "interval": [max(acc - half, 0.0), min(acc + half, 1.0)],
        "n": n,
        "params": {"eps": eps, "examples": n, "eval_keys": 5},
        "threat": "white-box BPDA",
        "group": group,
        "in_headline": counted,
        **extra,
    }


def synthetic_report() -> dict:
    """A results.json of schema 2 as the CPU demo writes it, abridged, with rounder numbers."""
    attacks = {
        "fgsm": _row(0.8, MAIN_EPS, True, "fgsm", vote_accuracy=0.81),
        "pgd_40": _row(0.61, MAIN_EPS, True, "pgd"),
        "pgd_40_r5": _row(0.59, MAIN_EPS, True, "pgd"),
        "cw_linf": _row(0.63, MAIN_EPS, True, "cw"),
        "eot_pgd": _row(0.57, MAIN_EPS, True, "eot"),
        "apgd_ce": _row(0.55, MAIN_EPS, True, "apgd"),
        "apgd_dlr": _row(0.58, MAIN_EPS, True, "apgd"),
        "graybox": _row(0.7, MAIN_EPS, True, "blackbox"),
        "network_only": _row(0.75, MAIN_EPS, True, "blackbox"),
        "pgd_1000": _row(0.54, MAIN_EPS, False, "pgd", n=100),
        "spsa": _row(0.72, MAIN_EPS, False, "blackbox", n=100),
        "no_me_pgd": _row(0.02, MAIN_EPS, False, "sanity"),
        "fixed_mask_pgd": _row(0.3, MAIN_EPS, False, "sanity"),
    }
    for mult, acc in SWEEP.items():
        attacks[f"sweep_eps_x{mult:g}"] = _row(acc, round(mult * MAIN_EPS, 6), False, "sanity")
    attacks["transfer_cw_l2_c20"] = _row(0.88, None, False, "blackbox", n=200)
    attacks["boundary"] = _row(0.93, None, False, "blackbox", n=50)
    report = {
        "schema_version": 2,
        "dataset": "mnist_5k",
        "model": "lenet",
        "step": 1252,
        "headline": {
            "accuracy": 0.5384,
            "n": 500,
            "interval": [0.503, 0.5738],
            "rows": ["clean"] + [k for k, v in attacks.items() if v["in_headline"]],
            "decided_by": {"apgd_ce": 120, "eot_pgd": 80},
        },
        "clean": {"accuracy": 0.967, "interval": [0.95, 0.98], "n": 500, "vote_accuracy": 0.97},
        "attacks": attacks,
        "checks": {},
        "budgets": {},
    }
    assert len(attacks) == N_ATTACKS
    return report


def _png_shape(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.load()
        return np.asarray(im).shape


def test_write_figures_writes_both_pngs(tmp_path):
    paths = plots.write_figures(synthetic_report(), str(tmp_path / "figs"))
    names = [os.path.basename(p) for p in paths]
    assert names == ["accuracy_vs_eps.png", "rows.png"]
    for p in paths:
        h, w = _png_shape(p)[:2]
        assert h > 200 and w > 200
    # clean + 21 rows: the picture grows with them, so every label keeps its own line.
    assert _png_shape(paths[1])[0] > (1 + N_ATTACKS) * 0.3 * 120


def test_sweep_selection_main_eps_and_clean_point():
    report = synthetic_report()
    pts = plots.sweep_points(report)
    assert [p[0] for p in pts] == pytest.approx([m * MAIN_EPS for m in SWEEP])
    assert [p[1] for p in pts] == list(SWEEP.values())
    assert plots.main_eps(report) == MAIN_EPS
    assert plots.num_classes(report) == 10
    assert plots.num_classes({**report, "num_classes": 100}) == 100
    # With `role` the field decides: a row named otherwise joins, a sweep_eps_x name without it
    # leaves.
    report["attacks"]["sweep_eps_x4"]["role"] = "diagnostic"
    report["attacks"]["pgd_1000"]["role"] = "sweep"
    assert {p[3] for p in plots.sweep_points(report)} == {
        f"sweep_eps_x{m:g}" for m in SWEEP if m != 4.0
    } | {"pgd_1000"}


def test_no_eps_plot_with_one_sweep_point(tmp_path):
    report = synthetic_report()
    for name in [n for n in report["attacks"] if n.startswith("sweep_eps_x")]:
        if name != "sweep_eps_x1":
            del report["attacks"][name]
    paths = plots.write_figures(report, str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ["rows.png"]
    assert not (tmp_path / "accuracy_vs_eps.png").exists()


def test_tolerates_missing_optional_fields(tmp_path):
    report = synthetic_report()
    del report["clean"]["vote_accuracy"], report["attacks"]["fgsm"]["vote_accuracy"]
    del report["attacks"]["pgd_40"]["interval"], report["model"], report["step"]
    del report["attacks"]["sweep_eps_x0"]  # the clean accuracy becomes the eps-0 point
    report["attacks"]["boundary"]["params"] = {}
    paths = plots.write_figures(report, str(tmp_path))
    assert len(paths) == 2 and all(os.path.getsize(p) > 0 for p in paths)


def _events(logdir):
    """Every Event in the TFRecord files under logdir (length, crc, data, crc per record)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            out.append(event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length]))
            pos += 12 + length + 4
    return out


def test_log_to_tensorboard_scalars_and_images_read_back(tmp_path):
    report = synthetic_report()
    workdir = str(tmp_path)
    paths = plots.write_figures(report, os.path.join(workdir, "figures"))
    plots.log_to_tensorboard(copy.deepcopy(report), workdir, paths)

    scalars, images = {}, {}
    for ev in _events(os.path.join(workdir, "tensorboard")):
        for v in ev.summary.value:
            assert ev.step == 1252
            if v.HasField("image"):
                images[v.tag] = v.image
            else:
                scalars[v.tag] = v.simple_value
    expected = {"eval/headline": 0.5384, "eval/clean": 0.967, "eval/fgsm": 0.8}
    expected |= {f"eval/sweep_eps_x{m:g}": a for m, a in SWEEP.items()}
    expected |= {"eval/transfer_cw_l2_c20": 0.88, "eval/boundary": 0.93, "eval/pgd_1000": 0.54}
    for tag, value in expected.items():
        assert scalars[tag] == pytest.approx(value, rel=1e-6), tag  # float32 in the event
    assert len(scalars) == 2 + N_ATTACKS  # headline, clean and the attack rows, nothing else
    assert set(images) == {"eval/accuracy_vs_eps", "eval/rows"}
    for tag, path in zip(("eval/accuracy_vs_eps", "eval/rows"), paths, strict=True):
        h, w = _png_shape(path)[:2]
        assert (images[tag].height, images[tag].width) == (h, w)
        with Image.open(io.BytesIO(images[tag].encoded_image_string)) as im:
            assert im.size == (w, h)

    with open(os.path.join(workdir, "eval_metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 1 and lines[0]["step"] == 1252
    for tag, value in expected.items():
        assert lines[0][tag] == value
