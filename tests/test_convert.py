"""Converting the ME-Net authors' PyTorch checkpoints (menet_jax.convert, menet_jax.torch_pickle).

The fixtures in tests/data/torch_fixtures/ were written by real torch the way the authors saved
their models (tests/data/make_torch_fixtures.py: the authors' ResNet18 at widths 4/8/16/32,
pickled under `models.resnet`): legacy serialisation bare (with torch 0.4.1's Parameter and
`_backend` pickling) and in nn.DataParallel, and a zip-serialised state_dict, with torch's
logits. No torch is needed here; `test_full_width_network_matches_torch` runs where it is.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest

from menet_jax import checkpoint, convert, me, torch_pickle
from menet_jax.config import load_config
from tests.test_evaluate import shrink_eval

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "data", "torch_fixtures")
CKPTS = ("legacy_bare.ckpt", "legacy_dp.ckpt", "zip_state_dict.pt")
TOL = 1e-4  # absolute, on logits of a few units


def authors_config(variant="authors_p05_adv", width=4):
    c = load_config(os.path.join(ROOT, f"configs/cifar10.py:{variant}"))
    c.model_width = width
    c.progress_bar = False
    return c


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = {}
    for name in CKPTS:
        workdir = str(tmp_path_factory.mktemp(name.split(".")[0]))
        prov = convert.convert(os.path.join(FIXTURES, name), authors_config(), workdir)
        out[name] = (workdir, prov)
    return out


@pytest.fixture(scope="module")
def torch_out():
    return dict(np.load(os.path.join(FIXTURES, "logits.npz")))


@pytest.mark.parametrize("name", CKPTS)
def test_converted_network_gives_torchs_logits(name, converted, torch_out):
    workdir, prov = converted[name]
    stem = name.split(".")[0]
    clf = checkpoint.load(workdir)
    x = jnp.asarray(torch_out["images"])
    diff = np.abs(np.asarray(clf.network(x)) - torch_out[f"{stem}_logits"]).max()
    assert diff <= TOL, diff
    # Through ME: our USVT under the fixed mask vs the authors' numpy USVT under the same mask
    # (train_adv.py's code), each followed by its own network. The masked image changes the
    # logits by far more than the tolerance, so this compares the reconstructions too.
    rec = me.reconstruct(x, jnp.asarray(torch_out["mask"]), method="usvt", channels="concat")
    diff_me = np.abs(np.asarray(clf.network(rec)) - torch_out[f"{stem}_me_logits"]).max()
    assert diff_me <= TOL, diff_me
    assert np.abs(torch_out[f"{stem}_me_logits"] - torch_out[f"{stem}_logits"]).max() > 100 * TOL
    assert clf.step == 0 and clf.inference_p == 0.5
    on_disk = json.load(open(os.path.join(workdir, convert.PROVENANCE_FILE)))
    assert on_disk == prov and len(prov["sha256"]) == 64 and prov["arrays"] == 102
    expected = {
        "legacy_bare.ckpt": ("legacy", "ResNet", 87.5, 199),
        "legacy_dp.ckpt": ("legacy", "DataParallel", 87.5, 199),
        "zip_state_dict.pt": ("zip", "state_dict", None, None),
    }[name]
    assert (prov["format"], prov["holds"], prov["acc"], prov["epoch"]) == expected


def test_reader_returns_the_authors_dict():
    obj = torch_pickle.load(os.path.join(FIXTURES, "legacy_dp.ckpt"))
    assert sorted(obj) == ["acc", "epoch", "model", "rng_state"]
    dp = obj["model"]
    assert dp.torch_class == "torch.nn.parallel.data_parallel.DataParallel"
    net = dp.children()["module"]
    assert net.torch_class == "models.resnet.ResNet"
    assert net.children()["layer2"].children()["0"].torch_class == "models.resnet.BasicBlock"
    bn = net.children()["bn1"]
    assert bn.eps == 1e-5 and bn._buffers["num_batches_tracked"].dtype == np.int64
    assert obj["rng_state"].dtype == np.uint8 and obj["epoch"] == 199


def _evil_pickle(target: str) -> bytes:
    # Protocol 0 by hand: GLOBAL os.system, MARK, STRING, TUPLE, REDUCE, STOP.
    return b"cos\nsystem\n(S'touch " + target.encode() + b"'\ntR."


def _legacy(obj_pickle: bytes) -> bytes:
    head = b"".join(
        pickle.dumps(v, protocol=2)
        for v in (torch_pickle.MAGIC_NUMBER, torch_pickle.PROTOCOL_VERSION, {"little_endian": 1})
    )
    return head + obj_pickle + pickle.dumps([], protocol=2)


def test_a_pickle_naming_os_system_is_refused_and_runs_nothing(tmp_path):
    target = str(tmp_path / "pwned")
    evil = _evil_pickle(target)
    files = {"plain.ckpt": evil, "legacy.ckpt": _legacy(evil)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "zip.pt", "w") as zf:
        zf.writestr("archive/data.pkl", evil)
    for name in [*files, "zip.pt"]:
        with pytest.raises(torch_pickle.TorchPickleError, match=r"global os\.system.*refusing"):
            torch_pickle.load(str(tmp_path / name))
        assert not os.path.exists(target)
    # The same through the command line: one line, exit status 1.
    code = convert.main(["convert", f"--torch={tmp_path / 'legacy.ckpt'}",
                         f"--config={ROOT}/configs/cifar10.py:authors_p05",
                         f"--workdir={tmp_path / 'w'}"])  # fmt: skip
    assert code == 1 and not os.path.exists(target) and not (tmp_path / "w").exists()


def test_user_errors_are_one_sentence(tmp_path, capsys):
    def run(torch_file, *extra):
        code = convert.main(["convert", f"--torch={torch_file}",
                             f"--config={ROOT}/configs/cifar10.py:authors_p05",
                             f"--workdir={tmp_path / 'w'}", *extra])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and err[-1].startswith("error: ") and "Traceback" not in "".join(err)
        return err[-1]

    assert "does not exist" in run(tmp_path / "missing.ckpt")
    (tmp_path / "text.ckpt").write_text("not a checkpoint\n")
    assert "neither a zip archive nor a legacy" in run(tmp_path / "text.ckpt")
    truncated = (open(os.path.join(FIXTURES, "legacy_bare.ckpt"), "rb").read())[:-1000]
    (tmp_path / "cut.ckpt").write_bytes(truncated)
    assert "truncated" in run(tmp_path / "cut.ckpt")
    bare = os.path.join(FIXTURES, "legacy_bare.ckpt")
    assert "4 channels wide at its stem, the config's resnet18 64" in run(bare)
    assert "--config.model_width=4" in run(bare)
    assert "only resnet18" in run(bare, "--config.model=wrn28_10")
    assert convert.main(["convert"]) == 1 and "--torch is required" in capsys.readouterr().err


def test_shapes_that_do_not_fit_are_refused():
    flat, _ = convert.state_dict(torch_pickle.load(os.path.join(FIXTURES, "zip_state_dict.pt")))
    from flax import nnx

    from menet_jax import input_pipeline, recipe

    model = recipe.create_model(authors_config(), input_pipeline.get_info("cifar10"))
    pure = nnx.to_pure_dict(nnx.state(model))
    bad = dict(flat, **{"linear.weight": np.zeros((100, 32), np.float32)})
    with pytest.raises(convert.ConvertError, match=r"linear\.weight has shape \(100, 32\)"):
        convert.fill(pure, bad, width=4)
    missing = {k: v for k, v in flat.items() if k != "layer3.0.shortcut.1.running_var"}
    with pytest.raises(convert.ConvertError, match="lacks layer3.0.shortcut.1.running_var"):
        convert.fill(pure, missing, width=4)
    extra = dict(flat, **{"layer4.2.conv1.weight": flat["layer4.1.conv1.weight"]})
    with pytest.raises(convert.ConvertError, match="no place"):
        convert.fill(pure, extra, width=4)


def test_storage_layout_of_the_legacy_format(tmp_path):
    """A hand-written legacy file: one 6-float storage seen as a 3x2 tensor of strides (1, 3)."""
    obj = (
        b"ctorch._utils\n_rebuild_tensor_v2\n("  # GLOBAL, MARK
        b"(S'storage'\nctorch\nFloatStorage\nS'0'\nS'cpu'\nI6\ntQ"  # persistent id
        b"I0\n(I3\nI2\nt(I1\nI3\ntI00\nccollections\nOrderedDict\n)RtR."
    )
    raw = _legacy(obj)[: -len(pickle.dumps([], protocol=2))] + pickle.dumps(["0"], protocol=2)
    raw += struct.pack("<q", 6) + np.arange(6, dtype="<f4").tobytes()
    (tmp_path / "t.ckpt").write_bytes(raw)
    got = torch_pickle.load(str(tmp_path / "t.ckpt"))
    np.testing.assert_array_equal(got, np.array([[0, 3], [1, 4], [2, 5]], np.float32))
    (tmp_path / "cut.ckpt").write_bytes(raw[:-4])
    with pytest.raises(torch_pickle.TorchPickleError, match="storage '0' is truncated"):
        torch_pickle.load(str(tmp_path / "cut.ckpt"))


def test_eval_runs_the_default_rows_on_a_converted_workdir(converted, monkeypatch):
    from menet_jax import evaluation, input_pipeline
    from menet_jax.bench.eval import digits_as

    monkeypatch.setattr(
        input_pipeline, "load_split", lambda name, split, **kw: digits_as((32, 32, 3), split)
    )
    workdir, _ = converted["legacy_dp.ckpt"]
    n = 4
    c = shrink_eval(authors_config("authors_p05_adv,tramer"), n, s=2)
    report = evaluation.evaluate(c, workdir)
    assert report["headline"]["n"] == n and 0 <= report["headline"]["accuracy"] <= 1
    assert {"pgd_2", "bpda_eot", "apgd_ce"} <= set(report["attacks"])


def test_full_width_network_matches_torch(tmp_path):
    """The real size (64/128/256/512 channels), where torch is installed (not in CI)."""
    torch = pytest.importorskip("torch")
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_torch_fixtures", os.path.join(ROOT, "tests", "data", "make_torch_fixtures.py")
    )
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    model = make.random_resnet18(64, seed=3)
    path = str(tmp_path / "full.ckpt")
    make.save_authors_checkpoint(model, path, data_parallel=True, torch04=True)
    images = np.random.RandomState(1).uniform(0, 1, (4, 3, 32, 32)).astype(np.float32)
    expected = make.torch_logits(model, images)
    workdir = str(tmp_path / "w")
    convert.convert(path, authors_config(width=64), workdir)
    got = checkpoint.load(workdir).network(jnp.asarray(images.transpose(0, 2, 3, 1)))
    assert np.abs(np.asarray(got) - expected).max() <= TOL
    del torch
