"""Fine-tuning from existing weights: `cnngraph train --init` / train.init / cnngraph.train(init=...)."""
import io
import subprocess
import sys

import numpy as np
import pytest
import yaml

import cnngraph
from cnngraph.errors import CheckpointError
from cnngraph.train.checkpoint import load_weights

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TRAIN = {"data": {"dataset": "digits", "limit": 64}, "loss": {"type": "cross_entropy"},
         "optimizer": {"type": "sgd", "lr": 0.0}, "batch_size": 32, "epochs": 1, "seed": 1}


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4, momentum=0.0)   # with lr 0, training changes nothing
        self.fc = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        y = torch.nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(y.flatten(1))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """An ONNX model imported by the CLI: (folder, spec path, weights path, onnx path)."""
    d = tmp_path_factory.mktemp("imported")
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():   # non-trivial running statistics, so a buffer that fails to load shows
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2)
    torch.onnx.export(net, (torch.randn(2, 1, 8, 8),), str(d / "m.onnx"), dynamo=False, opset_version=17,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}},
                      do_constant_folding=False)
    cli("import-onnx", str(d / "m.onnx"), "-o", str(d / "m.yaml"))
    spec = yaml.safe_load((d / "m.yaml").read_text())
    spec["train"] = dict(TRAIN)
    (d / "t.yaml").write_text(yaml.safe_dump(spec))
    return d


def cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "cnngraph.cli", *args], capture_output=True, text=True)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def ort_out(d, x):
    sess = ort.InferenceSession(str(d / "m.onnx"), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def trained_out(run, spec, x):
    model = cnngraph.Model(cnngraph.load_spec(spec))
    model.load_params(load_weights(run, prefer="last")[0])
    return model.forward(x)["y"]


X = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)


def test_cli_init_starts_from_the_imported_weights(imported, tmp_path):
    # lr 0 in evaluation: the run's weights are the imported ones, so it answers as ONNX Runtime does
    p = cli("train", str(imported / "t.yaml"), "--init", str(imported / "m.npz"), "--out", str(tmp_path / "r"),
            "--quiet")
    assert "warning" not in p.stderr
    got = trained_out(tmp_path / "r", imported / "t.yaml", X)
    np.testing.assert_allclose(got, ort_out(imported, X), rtol=1e-4, atol=1e-5)
    # without it the run starts from random weights
    cnngraph.train(str(imported / "t.yaml"), out=tmp_path / "rand", stream=io.StringIO())
    assert np.abs(trained_out(tmp_path / "rand", imported / "t.yaml", X) - ort_out(imported, X)).max() > 1e-2


def test_spec_init_is_relative_to_the_spec_and_the_api_takes_init(imported, tmp_path):
    spec = yaml.safe_load((imported / "t.yaml").read_text())
    spec["train"]["init"] = "m.npz"
    (imported / "t_init.yaml").write_text(yaml.safe_dump(spec))
    cnngraph.train(str(imported / "t_init.yaml"), out=tmp_path / "a", stream=io.StringIO())
    np.testing.assert_allclose(trained_out(tmp_path / "a", imported / "t.yaml", X), ort_out(imported, X),
                               rtol=1e-4, atol=1e-5)
    # and from a run folder, through the API
    cnngraph.train(str(imported / "t.yaml"), out=tmp_path / "b", init=tmp_path / "a", stream=io.StringIO())
    np.testing.assert_allclose(trained_out(tmp_path / "b", imported / "t.yaml", X), ort_out(imported, X),
                               rtol=1e-4, atol=1e-5)


def test_weights_that_do_not_fit_are_listed(imported, tmp_path):
    w = dict(np.load(imported / "m.npz"))
    names = sorted(w)
    w["extra.weight"] = np.zeros(3, np.float32)
    del w[names[0]]
    w[names[1]] = np.zeros((7,), np.float32)
    np.savez(tmp_path / "bad.npz", **w)
    with pytest.raises(CheckpointError) as e:
        cnngraph.train(str(imported / "t.yaml"), out=tmp_path / "r", init=tmp_path / "bad.npz", stream=io.StringIO())
    msg = str(e.value)
    assert f"1 missing: {names[0]}" in msg and "1 unexpected: extra.weight" in msg
    assert f"{names[1]} (7,)" in msg and "--init-partial" not in msg   # a wrong shape is never partial


def test_partial_init_keeps_missing_parameters_and_ignores_extra_ones(imported, tmp_path):
    w = dict(np.load(imported / "m.npz"))
    head = [n for n in w if n.endswith(".weight") and w[n].shape == (10, 64)]
    assert head
    del w[head[0]]
    w["old_head.weight"] = np.zeros((3, 64), np.float32)
    np.savez(tmp_path / "part.npz", **w)
    with pytest.raises(CheckpointError, match="--init-partial"):
        cnngraph.train(str(imported / "t.yaml"), out=tmp_path / "r", init=tmp_path / "part.npz",
                       stream=io.StringIO())
    stream = io.StringIO()
    cnngraph.train(str(imported / "t.yaml"), out=tmp_path / "p", init=tmp_path / "part.npz", init_partial=True,
                   stream=stream)
    assert f"1 parameter not in the file keep their initial values ({head[0]})" in stream.getvalue()
    got = load_weights(tmp_path / "p", prefer="last")[0]
    for n, v in w.items():
        if n in got:
            np.testing.assert_array_equal(got[n], v)


def test_resume_wins_over_init(imported, tmp_path):
    cnngraph.train(str(imported / "t.yaml"), out=tmp_path / "r", stream=io.StringIO())
    before = load_weights(tmp_path / "r", prefer="last")[0]
    stream = io.StringIO()
    cnngraph.train(str(imported / "t.yaml"), out=tmp_path / "r", resume=tmp_path / "r", epochs=2,
                   init=imported / "m.npz", stream=stream)
    assert "is ignored: a resumed run continues from its checkpoint's weights" in stream.getvalue()
    after = load_weights(tmp_path / "r", prefer="last")[0]
    for n in before:   # lr 0: still the first run's random weights, not the imported ones
        if "running" not in n:
            np.testing.assert_array_equal(after[n], before[n])


def test_imported_spec_header_shows_the_init_workflow(imported):
    head = (imported / "m.yaml").read_text().splitlines()[:4]
    assert any("cnngraph train m.yaml --init m.npz" in line for line in head), head


def test_constant_layers_without_weights_warn(tmp_path):
    spec = {"name": "c", "inputs": {"image": {"shape": [1, 8, 8]}},
            "layers": [{"id": "k", "type": "constant", "shape": [1, 8, 8]},
                       {"id": "add", "type": "broadcast_add", "inputs": ["image", "k"]},
                       {"id": "flat", "type": "flatten"}, {"id": "fc", "type": "dense", "out_features": 10}],
            "outputs": ["fc"], "train": TRAIN}
    stream = io.StringIO()
    cnngraph.train(spec, out=tmp_path / "r", stream=stream)
    assert "1 constant layer (k) set no fill and no weights were given, so they start at 0" in stream.getvalue()
    spec["layers"][0]["fill"] = 0.0   # a spec that says its value: no warning
    stream = io.StringIO()
    cnngraph.train(spec, out=tmp_path / "r2", stream=stream)
    assert "constant layer" not in stream.getvalue()
