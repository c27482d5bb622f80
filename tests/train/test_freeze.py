"""Transfer learning: train.freeze / --freeze / cnngraph.train(freeze=...) / Model.freeze keep layers fixed."""
import io

import numpy as np
import pytest

import cnngraph
from cnngraph.train.checkpoint import load_weights
from cnngraph.train.settings import TrainingError

LAYERS = [{"id": "conv1", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
          {"id": "bn1", "type": "batch_norm2d"},
          {"id": "act1", "type": "relu"},
          {"id": "pool", "type": "max_pool2d", "kernel_size": 2},
          {"id": "flat", "type": "flatten"},
          {"id": "head", "type": "dense", "out_features": 10}]


def spec(freeze=None, **train):
    t = {"data": {"dataset": "digits", "limit": 96}, "batch_size": 32, "epochs": 1, "seed": 3,
         "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}, **train}
    if freeze is not None:
        t["freeze"] = freeze
    return {"name": "ft", "inputs": {"image": {"shape": [1, 8, 8]}}, "layers": LAYERS, "outputs": ["head"], "train": t}


def test_frozen_layers_keep_weights_and_running_statistics(tmp_path):
    start = cnngraph.compile(spec(), seed=3).params.numpy()
    cnngraph.train(spec(["conv*", "bn1"]), out=tmp_path / "run", quiet=True)
    after, _ = load_weights(tmp_path / "run")
    for name in ("conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var"):
        assert np.array_equal(after[name], start[name]), name      # weight decay and momentum touch none of them
    assert not np.array_equal(after["head.weight"], start["head.weight"])


def test_gradients_match_torch_with_requires_grad_off_and_frozen_batch_norm_in_eval_mode():
    torch = pytest.importorskip("torch")
    model = cnngraph.compile(spec(), dtype="float64", seed=0)
    model.freeze(["conv1", "bn1"])
    rng = np.random.default_rng(0)
    x, gy = rng.standard_normal((5, 1, 8, 8)), rng.standard_normal((5, 10))
    p = model.params.numpy()
    p["bn1.running_mean"][:] = rng.standard_normal(4)
    p["bn1.running_var"][:] = rng.uniform(0.5, 2, 4)
    model.load_params(p)
    model.forward({"image": x}, training=True)
    grads = model.backward({"head": gy}, input_grads=False)
    assert sorted(grads) == ["head.bias", "head.weight"] == sorted(model.trainable_names)

    conv, bn, fc = torch.nn.Conv2d(1, 4, 3, padding=1).double(), torch.nn.BatchNorm2d(4).double(), torch.nn.Linear(64, 10).double()
    t = {k: torch.from_numpy(v.copy()) for k, v in p.items()}
    with torch.no_grad():
        conv.weight[:], conv.bias[:], fc.weight[:], fc.bias[:] = t["conv1.weight"], t["conv1.bias"], t["head.weight"], t["head.bias"]
        bn.weight[:], bn.bias[:], bn.running_mean[:], bn.running_var[:] = (t["bn1.weight"], t["bn1.bias"],
                                                                           t["bn1.running_mean"], t["bn1.running_var"])
    for m in (conv, bn):
        m.requires_grad_(False)
    bn.eval()
    out = fc(torch.nn.functional.max_pool2d(torch.relu(bn(conv(torch.from_numpy(x)))), 2).flatten(1))
    out.backward(torch.from_numpy(gy))
    np.testing.assert_allclose(grads["head.weight"], fc.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(grads["head.bias"], fc.bias.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_backward_skips_layers_that_only_lead_to_frozen_ones(monkeypatch):
    from cnngraph.plugins.connection import Conv2d
    calls = []
    original = Conv2d.backward
    monkeypatch.setattr(Conv2d, "backward", lambda self, ctx, gy: calls.append(1) or original(self, ctx, gy))
    model = cnngraph.compile(spec())
    x = np.zeros((2, 1, 8, 8), np.float32)
    for frozen, expected in (([], 1), (["conv1"], 0)):
        model.freeze(frozen)
        calls.clear()
        model.forward({"image": x}, training=True)
        model.backward({"head": np.ones((2, 10), np.float32)}, input_grads=False)
        assert len(calls) == expected, frozen


@pytest.mark.parametrize("freeze,message", [
    (["act*"], "freeze pattern 'act*' matches only layers without parameters (act1)"),
    (["conv1", "bn1", "head"], "freeze leaves no parameter to train (it matches every layer with weights: conv1, bn1, head)"),
])
def test_freezing_nothing_or_everything_is_refused(tmp_path, freeze, message):
    with pytest.raises(TrainingError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        cnngraph.train(spec(freeze), out=tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()


def test_an_unknown_layer_is_a_located_spec_error(tmp_path):
    import yaml
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(spec(["conv1", "haed"]), sort_keys=False))
    with pytest.raises(cnngraph.SpecError) as info:
        cnngraph.load_spec(path)
    (p,) = info.value.problems
    assert p.path == "train.freeze[1]" and "freeze pattern 'haed' matches no layer" in p.message
    assert "did you mean 'head'" in p.message and p.line is not None
    with pytest.raises(ValueError, match="freeze: 'nope' is not a layer"):
        cnngraph.compile(spec()).freeze(["nope"])


def test_cli_freeze_overrides_the_spec_and_says_what_it_froze(tmp_path, capsys):
    import yaml
    from cnngraph.cli import main
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(spec(["conv1"]), sort_keys=False))
    assert main(["train", str(path), "--out", str(tmp_path / "a"), "--freeze", "conv1,bn*"]) == 0
    err = capsys.readouterr().err
    assert "frozen: conv1, bn1 (48 parameters fixed, 650 trained; frozen layers run in inference mode)" in err
    assert main(["train", str(path), "--out", str(tmp_path / "b"), "--freeze", ""]) == 0
    assert "frozen:" not in capsys.readouterr().err
    start = cnngraph.compile(spec(), seed=3).params.numpy()
    trained, _ = load_weights(tmp_path / "b")
    assert not np.array_equal(trained["conv1.weight"], start["conv1.weight"])


def test_a_resumed_run_keeps_its_freeze_unless_told_otherwise(tmp_path):
    """--freeze is a setting like --lr: stored in the checkpoint, kept on --resume, and a change is noted."""
    s = spec(schedule={"type": "constant"})
    s["train"]["epochs"] = 3
    cnngraph.train(s, out=tmp_path / "run", epochs=1, freeze=["conv1", "bn1"], quiet=True)
    first, _ = load_weights(tmp_path / "run/checkpoint/last")
    stream = io.StringIO()
    cnngraph.train(s, resume=tmp_path / "run", epochs=2, stream=stream)
    kept, _ = load_weights(tmp_path / "run/checkpoint/last")
    assert np.array_equal(kept["conv1.weight"], first["conv1.weight"]) and "frozen: conv1, bn1" in stream.getvalue()
    stream = io.StringIO()
    cnngraph.train(s, resume=tmp_path / "run", epochs=3, freeze=[], stream=stream)
    assert "note: resuming with freeze [] (was ['conv1', 'bn1'])" in stream.getvalue()
    thawed, _ = load_weights(tmp_path / "run/checkpoint/last")
    assert not np.array_equal(thawed["conv1.weight"], first["conv1.weight"])


def test_a_frozen_backbone_keeps_no_activations_for_backward():
    """A grad-mode forward keeps nothing for layers no parameter gradient passes (a frozen backbone), so their
    activations are freed as in inference: resnet_small at batch 32 with only its head trainable needs 3x less
    training memory. Input gradients through them are then refused with a clear message."""
    from cnngraph.errors import RunError
    from cnngraph.summary import training_memory
    spec = cnngraph.load_spec("specs/resnet_small.yaml")
    full, frozen = cnngraph.compile(spec), cnngraph.compile(spec)
    frozen.freeze([lid for lid, names in frozen._names.items() if names and lid != "logits"])
    assert training_memory(frozen, 32).peak_bytes * 2 < training_memory(full, 32).peak_bytes
    x = np.random.default_rng(0).standard_normal((2, *spec.inputs["image"].shape)).astype(np.float32)
    g = np.ones((2, 10), np.float32)
    full.forward({"image": x}, training=False, grad=True)   # frozen batch norms run in inference mode
    frozen.forward({"image": x}, training=True)
    want = full.backward({"logits": g}, input_grads=False)["logits.weight"]
    np.testing.assert_allclose(frozen.backward({"logits": g}, input_grads=False)["logits.weight"], want, rtol=1e-5)
    frozen.forward({"image": x}, training=True)
    with pytest.raises(RunError, match=r"backward through frozen layers \(.*\) needs their activations, which a "
                                       r"forward of a model with frozen layers does not keep"):
        frozen.backward({"logits": g})
