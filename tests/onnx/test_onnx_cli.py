"""The import-onnx / export-onnx commands, error messages, names and symbolic dimensions."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import cnngraph
from cnngraph.cli import main
from cnngraph.onnx import OnnxError, import_onnx
from onnx_build import make_model, ort_run, rand

N = helper.make_node
ROOT = Path(__file__).resolve().parents[2]


def _small_cnn(tmp_path):
    nodes = [N("Conv", ["in:0", "w", "b"], ["c"], name="features/conv 1", pads=[1, 1, 1, 1]),
             N("Relu", ["c"], ["r"], name="features/relu"),
             N("GlobalAveragePool", ["r"], ["g"], name="pool"),
             N("Flatten", ["g"], ["f"], name="flat"),
             N("Gemm", ["f", "fw", "fb"], ["out/logits"], name="fc", transB=1)]
    model = make_model(nodes, {"in:0": (1, 3, 8, 8)}, {"w": rand(4, 3, 3, 3), "b": rand(4), "fw": rand(5, 4),
                                                      "fb": rand(5)}, outputs=("out/logits",))
    path = tmp_path / "cnn.onnx"
    onnx.save(model, str(path))
    return model, path


def test_cli_import_run_train_and_reexport(tmp_path, capsys):
    model, path = _small_cnn(tmp_path)
    out = tmp_path / "spec" / "cnn.yaml"
    assert main(["import-onnx", str(path), "-o", str(out), "--check"]) == 0
    text = out.read_text()
    assert "id: features.conv_1" in text and "'in:0' → in_0" in text
    spec = cnngraph.load_spec(out)
    assert list(spec.inputs) == ["in_0"] and spec.outputs == ["out.logits"]
    weights = np.load(out.with_suffix(".npz"), allow_pickle=False)
    assert sorted(weights.files) == ["features.conv_1.bias", "features.conv_1.weight", "out.logits.bias",
                                     "out.logits.weight"]   # the output layer is named after its ONNX output
    assert weights["out.logits.weight"].shape == (5, 4)
    x = rand(2, 3, 8, 8)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(out), "--params", str(out.with_suffix(".npz")), "--input", str(tmp_path / "x.npy"),
                 "--output", str(tmp_path / "y.npy")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), ort_run(model, {"in:0": x})["out/logits"],
                               rtol=1e-5, atol=1e-5)
    assert main(["summary", str(out)]) == 0
    # re-export with the imported weights, at a chosen opset
    back = tmp_path / "back.onnx"
    assert main(["export-onnx", str(out), "--params", str(out.with_suffix(".npz")), "-o", str(back),
                 "--opset", "18"]) == 0
    proto = onnx.load(str(back))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version == 18
    np.testing.assert_allclose(ort_run(proto, {"in_0": x})["out.logits"], ort_run(model, {"in:0": x})["out/logits"],
                               rtol=1e-5, atol=1e-5)


def test_cli_export_from_checkpoint(tmp_path, capsys):
    _, path = _small_cnn(tmp_path)
    m = import_onnx(path)
    run = tmp_path / "run"
    m.save(run / "checkpoint" / "best")
    spec_path = tmp_path / "s.yaml"
    from cnngraph.onnx.yamlio import write_spec
    write_spec(m.spec.to_dict(), spec_path)
    for where in (run, run / "checkpoint", run / "checkpoint" / "best"):
        assert main(["export-onnx", str(spec_path), "--checkpoint", str(where), "-o", str(tmp_path / "e.onnx")]) == 0
    assert main(["export-onnx", str(spec_path), "--checkpoint", str(tmp_path), "-o", str(tmp_path / "e.onnx")]) == 1
    assert "no checkpoint found" in capsys.readouterr().err
    assert main(["export-onnx", str(spec_path), "-o", str(tmp_path / "r.onnx")]) == 0
    assert "random" in capsys.readouterr().err


def test_onnx_names_are_kept_by_the_imported_model(tmp_path):
    model, path = _small_cnn(tmp_path)
    m = import_onnx(path)
    x = rand(3, 3, 8, 8)
    assert set(m.forward({"in:0": x})) == {"out/logits"}
    assert m.onnx_inputs == {"in:0": "in_0"} and m.onnx_outputs == {"out/logits": "out.logits"}


def test_unsupported_ops_listed_in_one_message():
    nodes = [N("Relu", ["x"], ["a"], name="r"), N("Sinh", ["a"], ["b"], name="hs1"),
             N("Sinh", ["b"], ["c"], name="hs2"), N("Hardmax", ["c"], ["d"], name="round"),
             N("Relu", ["d"], ["y"], name="after")]
    model = make_model(nodes, {"x": (1, 3, 4, 4)}, opset=17)
    with pytest.raises(OnnxError) as exc:
        import_onnx(model)
    text = str(exc.value)
    assert "Sinh ×2: hs1, hs2" in text and "Hardmax ×1: round" in text and "3 nodes of 2 unsupported" in text
    assert main_error(model) == 1


def main_error(model, extra=()):
    import tempfile, os
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "m.onnx")
        onnx.save(model, p)
        return main(["import-onnx", p, "-o", os.path.join(d, "o.yaml"), *extra])


def _symbolic_model():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph([N("Relu", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_symbolic_dims_need_input_shape(capsys):
    model = _symbolic_model()
    with pytest.raises(OnnxError, match=r"symbolic dimension 2 \('H'\).*--input-shape x=1,3,224,224 with your"):
        import_onnx(model)
    with pytest.raises(OnnxError, match="--input-shape"):   # the suggestion runs as written
        import_onnx(model, input_shapes={"x": [1, 3, "H", "W"]})
    assert import_onnx(model, input_shapes={"x": [1, 3, 224, 224]}).spec.inputs["x"].shape == [3, 224, 224]
    m = import_onnx(model, input_shapes={"x": [1, 3, 5, 6]})
    assert m.spec.inputs["x"].shape == [3, 5, 6]
    assert main_error(model, ["--input-shape", "x=1,3,5,6"]) == 0
    assert main_error(model, ["--input-shape", "x=1,3,a"]) == 1
    assert "--input-shape expects" in capsys.readouterr().err


def test_outputs_without_the_batch_axis_first_are_refused():
    model = make_model([N("Transpose", ["x"], ["y"], perm=[1, 0, 2])], {"x": (2, 3, 4)})
    with pytest.raises(OnnxError, match=r"graph output 'y' of shape \(3, N, 4\) does not have the batch axis"):
        import_onnx(model)
    model = make_model([N("Reshape", ["x", "s"], ["y"])], {"x": (2, 3, 4)}, {"s": np.array([-1, 4], np.int64)})
    with pytest.raises(OnnxError, match=r"graph output 'y' of shape \(3N, 4\) does not have the batch axis"):
        import_onnx(model)


def test_imported_model_trains():
    nodes = [N("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), N("Mul", ["c", "s"], ["m"]),
             N("Relu", ["m"], ["y"])]
    model = make_model(nodes, {"x": (1, 2, 5, 5)}, {"w": rand(3, 2, 3, 3), "s": rand(3, 1, 1)})
    m = import_onnx(model)
    x = rand(4, 2, 5, 5)
    y = m.forward({"x": x}, training=True)["y"]
    g = m.backward({"y": np.ones_like(y)})
    assert set(g) >= set(m.trainable_names) and len(m.trainable_names) == 2


def test_export_of_a_trained_run_records_and_can_include_its_normalisation(tmp_path, capsys):
    """A deployed model must not silently expect normalised inputs: the run's mean/std/classes go into the
    metadata, and --include-normalization makes the ONNX model take raw inputs like `cnngraph predict`."""
    import json
    import onnxruntime as ort
    from cnngraph.train.loop import load_model
    spec = ROOT / "specs" / "digits_cnn.yaml"
    cnngraph.train(spec, epochs=1, out=tmp_path / "run", quiet=True)
    model = load_model(tmp_path / "run")
    stats = model.checkpoint_meta["dataset"]
    raw = (np.random.default_rng(0).random((3, 1, 8, 8)) * 16).astype(np.float32)
    normed = ((raw - np.float32(stats["mean"][0])) / np.float32(stats["std"][0])).astype(np.float32)
    want = model.forward({"image": normed})["logits"]
    capsys.readouterr()
    for flag, feed in (([], normed), (["--include-normalization"], raw)):
        out = tmp_path / f"m{len(flag)}.onnx"
        assert main(["export-onnx", str(spec), "--checkpoint", str(tmp_path / "run"), "-o", str(out), *flag]) == 0
        printed = capsys.readouterr().out
        assert ("note: the model takes normalised inputs" in printed) == (not flag)
        proto = onnx.load(str(out))
        onnx.checker.check_model(proto, full_check=True)
        meta = json.loads({e.key: e.value for e in proto.metadata_props}["cnngraph.dataset"])
        assert meta["mean"] == stats["mean"] and meta["classes"] == stats["classes"]
        got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"image": feed})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert main(["export-onnx", str(spec), "-o", str(tmp_path / "r.onnx"), "--include-normalization"]) == 1
    assert "needs the weights of a training checkpoint" in capsys.readouterr().err
