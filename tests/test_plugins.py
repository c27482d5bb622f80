"""Plugins: the hook surface, the three ways to load a plugin, consent, safe YAML, errors that name the
plugin, and the `ops` / `plugins` commands."""
from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cnngraph
from cnngraph import hookspecs, registry
from cnngraph.cli import main
from cnngraph.errors import PluginError, RunError, SpecError

PLUGINS = Path(__file__).parent / "plugins"
ROOT = Path(__file__).resolve().parent.parent


def one_layer(op_type: str, shape=(3, 4, 4), **params) -> dict:
    return {"inputs": {"x": {"shape": list(shape)}}, "layers": [{"id": "a", "type": op_type, **params}],
            "outputs": ["a"]}


# -- the hook surface ------------------------------------------------------------------------------
def hook_specs():
    return {name: fn for name, fn in vars(hookspecs).items()
            if callable(fn) and getattr(fn, hookspecs.PROJECT + "_spec", None) is not None}


def test_every_hook_is_documented_and_typed():
    specs = hook_specs()
    assert len(specs) >= 5
    for name, fn in specs.items():
        doc = inspect.getdoc(fn) or ""
        assert len(doc) > 30, f"hook {name} has no docstring"
        sig = inspect.signature(fn)
        assert list(sig.parameters) == ["registry"], name
        assert all(p.annotation is not inspect.Parameter.empty for p in sig.parameters.values()), name
        assert sig.return_annotation is not inspect.Signature.empty, name


def test_registry_calls_exactly_the_declared_hooks():
    assert set(registry._HOOKS) == set(hook_specs())


def test_builtins_register_only_through_the_hooks():
    import importlib
    for modname in registry.DEFAULT_PLUGINS:
        module = importlib.import_module(modname)
        impls = [n for n, f in vars(module).items() if getattr(f, hookspecs.PROJECT + "_impl", None) is not None]
        assert impls and set(impls) <= set(hook_specs()), modname


def test_ops_declare_their_contract_side_by_side():
    relu = cnngraph.get_registry().op("conv2d")
    for attr in ("Params", "infer_shape", "init_params", "forward", "backward", "flops", "examples"):
        assert attr in vars(relu) or hasattr(relu, attr)
    assert issubclass(relu.Params, cnngraph.OpParams)


# -- way 1: an installed package (entry point) -------------------------------------------------------
def make_dist(tmp_path: Path, name: str, module_body: str) -> Path:
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(module_body))
    info = tmp_path / f"{name}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[cnngraph]\n{name}_ep = {name}\n")
    return tmp_path


def test_entry_point_plugin_is_found_and_listed(tmp_path, monkeypatch, fresh, capsys):
    make_dist(tmp_path, "epdemo", """
        import cnngraph

        class Double(cnngraph.Op):
            '''2 * x.'''
            type = "ep_double"
            def forward(self, ctx, inputs, params):
                return inputs[0] * 2
            def backward(self, ctx, gy):
                return [gy * 2], {}

        @cnngraph.hookimpl
        def cnngraph_register_ops(registry):
            registry.add(Double)
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._STATE = None
    reg = registry.get_registry()
    assert reg.ops["ep_double"].plugin == "epdemo_ep"
    assert "package epdemo 0.3" in reg.plugins["epdemo_ep"]
    spec = cnngraph.load_spec(one_layer("ep_double"))      # no consent needed: installed packages load
    assert spec.graph.nodes["a"]["plugin"] == "epdemo_ep"
    assert main(["ops"]) == 0
    assert "ep_double  [epdemo_ep]" in capsys.readouterr().out
    assert main(["plugins"]) == 0
    assert "epdemo_ep  (entry point epdemo (package epdemo 0.3)): 1 op" in capsys.readouterr().out


def test_a_broken_installed_plugin_is_skipped_with_one_warning_not_fatal(tmp_path, monkeypatch, fresh, capsys):
    """One broken package must not stop every command: it is skipped, named once on stderr, listed by
    `cnngraph plugins`, and named again where a spec uses a type it would have registered."""
    make_dist(tmp_path, "epbroken", "import cnngraph_no_such_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._STATE = None
    reg = registry.get_registry()
    err = capsys.readouterr().err
    assert "warning: installed plugin 'epbroken_ep' (entry point epbroken, package epbroken 0.3) is skipped: " \
           "failed to import: ModuleNotFoundError" in err and "CNNGRAPH_DISABLE_PLUGINS=epbroken_ep" in err
    assert "relu" in reg.ops and "epbroken_ep" not in reg.plugins
    assert main(["ops"]) == 0                       # other commands keep working, without a second warning
    assert "warning" not in capsys.readouterr().err
    assert main(["plugins"]) == 0
    assert "epbroken_ep  (installed, not loaded): failed to import: ModuleNotFoundError" in capsys.readouterr().out
    with pytest.raises(SpecError, match=r"unknown op type 'ep_gone'.*installed plugin 'epbroken_ep' was not "
                                        r"loaded \(failed to import"):
        cnngraph.load_spec(one_layer("ep_gone"))


_OP_FILE = """
import cnngraph

class Same(cnngraph.Op):
    type = "{op}"
    def forward(self, ctx, inputs, params):
        return inputs[0]

@cnngraph.hookimpl
def cnngraph_register_ops(registry):
    registry.add(Same)
"""


def test_an_installed_plugin_clashing_with_a_built_in_is_skipped_and_can_be_disabled(tmp_path, monkeypatch, fresh,
                                                                                    capsys):
    make_dist(tmp_path, "epclash", _OP_FILE.format(op="relu"))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._STATE = None
    reg = registry.get_registry()
    assert "op 'relu' is registered twice" in capsys.readouterr().err
    assert reg.ops["relu"].plugin == "cnngraph.plugins.activation"    # the built-in stays, untouched
    assert "epclash_ep" not in reg.plugins and "epclash_ep" in reg.skipped
    monkeypatch.setenv("CNNGRAPH_DISABLE_PLUGINS", "other, epclash_ep")
    registry._STATE = None
    reg = registry.get_registry()
    assert capsys.readouterr().err == ""
    assert reg.skipped == {"epclash_ep": "disabled by CNNGRAPH_DISABLE_PLUGINS"}


def test_two_installed_plugins_claiming_one_op_name_use_neither(tmp_path, monkeypatch, fresh, capsys):
    """Which package would win is an accident of load order: neither does, each keeps its other ops, and a
    spec using the name is told which packages clash."""
    body = """
        import cnngraph

        class Swish(cnngraph.Op):
            type = "ep_swish"
            def forward(self, ctx, inputs, params):
                return inputs[0] * FACTOR

        class Own(cnngraph.Op):
            type = "ep_own_NAME"
            def forward(self, ctx, inputs, params):
                return inputs[0]

        @cnngraph.hookimpl
        def cnngraph_register_ops(registry):
            registry.add(Swish)
            registry.add(Own)
    """
    for name, factor in (("epone", 1), ("eptwo", 2)):
        (tmp_path / name).mkdir()
        make_dist(tmp_path / name, name, body.replace("FACTOR", str(factor)).replace("NAME", name))
        monkeypatch.syspath_prepend(str(tmp_path / name))
    registry._STATE = None
    reg = registry.get_registry()
    err = capsys.readouterr().err
    assert "op 'ep_swish' is registered by more than one installed plugin: " in err
    assert "'epone_ep'" in err and "'eptwo_ep'" in err
    assert "ep_swish" not in reg.ops and {"ep_own_epone", "ep_own_eptwo"} <= set(reg.ops)
    assert not reg.skipped
    with pytest.raises(SpecError, match=r"op 'ep_swish' is registered by more than one installed plugin.*neither is "
                                        r"used. Uninstall one, or disable one with CNNGRAPH_DISABLE_PLUGINS="):
        cnngraph.load_spec(one_layer("ep_swish"))
    class Late(cnngraph.Op):      # a plugin file loaded later may not take the name either
        type = "ep_swish"
    with pytest.raises(cnngraph.PluginError, match="'ep_swish' is registered by installed plugins"):
        reg.current_plugin = "late.py"
        try:
            reg.add(Late)
        finally:
            reg.current_plugin = "<runtime>"
    monkeypatch.setenv("CNNGRAPH_DISABLE_PLUGINS", "eptwo_ep")
    registry._STATE = None
    assert registry.get_registry().ops["ep_swish"].plugin == "epone_ep"
    capsys.readouterr()



def test_a_skipped_plugin_gives_a_contested_name_back(tmp_path, monkeypatch, fresh, capsys):
    """The second claimant fails after claiming the name: it is skipped, so the first one keeps it."""
    good = _OP_FILE.format(op="ep_keep")
    broken = good.replace("registry.add(Same)", "registry.add(Same)\n    raise RuntimeError('late failure')")
    for name, body in (("epgood", good), ("epbad", broken)):
        (tmp_path / name).mkdir()
        make_dist(tmp_path / name, name, body)
        monkeypatch.syspath_prepend(str(tmp_path / name))
    registry._STATE = None
    reg = registry.get_registry()
    assert "epbad_ep" in reg.skipped and reg.ops["ep_keep"].plugin == "epgood_ep" and not reg.contested
    capsys.readouterr()


def test_contrib_package_when_installed(capsys):
    from importlib.metadata import entry_points
    if not any(ep.name == "contrib" for ep in entry_points(group="cnngraph")):
        pytest.skip("cnngraph-contrib is not installed (pip install -e plugins/contrib)")
    assert main(["ops"]) == 0
    out = capsys.readouterr().out
    for op in ("swish", "mish", "hard_swish", "squeeze_excitation"):
        assert f"{op}  [contrib]" in out


# -- way 2: a plain Python file, from the spec or the command line ------------------------------------
def test_spec_plugin_file_needs_consent_in_python(fresh):
    path = PLUGINS / "uses_good_layers.yaml"
    with pytest.raises(SpecError) as err:
        cnngraph.load_spec(path)
    first = err.value.problems[0]
    assert first.path == "plugins" and first.line == 2
    assert str(PLUGINS / "good_layers.py") in first.message
    assert "--allow-plugins" in first.message and "allow_plugins=True" in first.message
    assert "scaled_tanh" not in registry.get_registry().ops          # nothing was imported
    spec = cnngraph.load_spec(path, allow_plugins=True)              # relative to the spec file
    assert spec.graph.nodes["act"]["plugin"] == "tests/plugins/good_layers.py" or \
        spec.graph.nodes["act"]["plugin"].endswith("good_layers.py")
    model = cnngraph.compile(spec)
    x = np.linspace(-2, 2, 32, dtype=np.float32).reshape(1, 2, 4, 4)
    np.testing.assert_allclose(model.forward({"x": x})["act"], 3.0 * np.tanh(x), rtol=1e-6)


def test_spec_plugin_file_needs_consent_on_the_cli(fresh, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    spec = "tests/plugins/uses_good_layers.yaml"
    assert main(["validate", spec]) == 1
    out = capsys.readouterr().out
    assert "tests/plugins/uses_good_layers.yaml:2:" in out and "good_layers.py" in out and "--allow-plugins" in out
    assert main(["validate", spec, "--allow-plugins"]) == 0
    assert "OK" in capsys.readouterr().out


def test_naming_the_specs_plugin_file_with_plugin_is_consent(fresh, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(["validate", "tests/plugins/uses_good_layers.yaml", "--plugin", "tests/plugins/good_layers.py"]) == 0
    assert "OK" in capsys.readouterr().out


def test_a_plugin_file_that_failed_to_register_loads_once_fixed(fresh, tmp_path):
    path = tmp_path / "retry.py"
    body = ("import cnngraph\nfrom cnngraph.op import Op\nclass R(Op):\n    type = {name!r}\n"
            "    def forward(self, ctx, inputs, params):\n        return inputs[0]\n"
            "@cnngraph.hookimpl\ndef cnngraph_register_ops(registry):\n    registry.add(R)\n")
    path.write_text(body.format(name="relu"))              # clashes with the built-in relu
    with pytest.raises(PluginError, match="registered twice"):
        registry.load_plugin_file(path)
    path.write_text(body.format(name="retry_op"))
    registry.load_plugin_file(path)
    assert "retry_op" in registry.get_registry().ops


@pytest.mark.parametrize("params_src, message", [
    ("class P:\n    pass", "Params must be a subclass of cnngraph.OpParams"),
    ("class P(pydantic.BaseModel):\n    k: int = 1", "Params must be a subclass of cnngraph.OpParams"),
    ("class P(OpParams):\n    block: int = 2", "parameter name 'block' is reserved"),
    ("class P(OpParams):\n    scale: float = 'big'", "the default of parameter 'scale' .'big'. is invalid"),
])
def test_op_params_are_checked_when_registered(fresh, tmp_path, params_src, message):
    path = tmp_path / "bad_params.py"
    path.write_text("import pydantic\nimport cnngraph\nfrom cnngraph.op import Op, OpParams\n" + params_src +
                    "\nclass B(Op):\n    type = 'bad_params_op'\n    Params = P\n"
                    "@cnngraph.hookimpl\ndef cnngraph_register_ops(registry):\n    registry.add(B)\n")
    with pytest.raises(PluginError, match=message):
        registry.load_plugin_file(path)


def test_plugin_file_on_the_command_line(fresh, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(ROOT)
    spec = tmp_path / "s.yaml"
    spec.write_text("inputs: {x: {shape: [4]}}\nlayers: [{id: t, type: scaled_tanh}]\noutputs: [t]\n")
    assert main(["validate", str(spec), "--plugin", "tests/plugins/good_layers.py"]) == 0
    assert main(["ops", "--plugin", "tests/plugins/good_layers.py"]) == 0
    assert "scaled_tanh  [tests/plugins/good_layers.py]" in capsys.readouterr().out
    assert main(["plugins", "--plugin", "tests/plugins/good_layers.py"]) == 0
    out = capsys.readouterr().out
    assert f"tests/plugins/good_layers.py  (file {ROOT / 'tests/plugins/good_layers.py'}): 1 op" in out
    assert "cnngraph.plugins.activation  (built-in)" in out


def test_loading_the_same_file_twice_is_a_no_op(fresh):
    a = cnngraph.load_plugin_file(PLUGINS / "good_layers.py")
    b = cnngraph.load_plugin_file(str(PLUGINS / "good_layers.py"))
    assert a == b and "scaled_tanh" in fresh.ops


@pytest.mark.parametrize("module_first", [True, False])
def test_one_file_named_as_a_module_and_as_a_path_loads_once(fresh, tmp_path, monkeypatch, module_first):
    modname = f"same_file_{module_first}"
    (tmp_path / f"{modname}.py").write_text(_OP_FILE.format(op=f"same_op_{module_first}".lower()))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, modname, raising=False)
    names = [modname, str(tmp_path / f"{modname}.py")]
    first, second = names if module_first else names[::-1]
    assert cnngraph.load_plugin_file(first) == cnngraph.load_plugin_file(second) == first


def test_plugin_naming_a_module_its_entry_point_loaded_is_a_no_op(tmp_path, monkeypatch, fresh, capsys):
    make_dist(tmp_path, "epagain", _OP_FILE.format(op="ep_again"))
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._STATE = None
    assert cnngraph.load_plugin_file("epagain") == "epagain_ep"
    rc, text = _cli(capsys, ["ops", "ep_again", "--plugin", "epagain"])
    assert rc == 0 and "ep_again  [epagain_ep]" in text and "registered" not in text


def test_a_plugin_file_imports_a_helper_module_next_to_it(fresh, tmp_path, monkeypatch):
    (tmp_path / "sibling_helper_mod.py").write_text("FACTOR = 3\n")
    (tmp_path / "uses_sibling.py").write_text("from sibling_helper_mod import FACTOR\n"
                                              + _OP_FILE.format(op="uses_sibling"))
    monkeypatch.delitem(__import__("sys").modules, "sibling_helper_mod", raising=False)
    cnngraph.load_plugin_file(tmp_path / "uses_sibling.py")
    assert "uses_sibling" in fresh.ops
    assert str(tmp_path) not in __import__("sys").path     # only while it loads: no shadowing later imports


def test_a_folder_as_plugin_says_it_is_a_folder(fresh, tmp_path, capsys):
    (tmp_path / "pkg").mkdir()
    rc, text = _cli(capsys, ["ops", "--plugin", str(tmp_path / "pkg")])
    assert rc == 1 and "is a directory; name a .py file in it, or the package as an importable module" in text
    assert "does not exist" not in text


def test_a_plugin_file_using_register_op_is_credited_to_the_file(fresh, tmp_path, capsys):
    (tmp_path / "regfile.py").write_text("import cnngraph\n\n@cnngraph.register_op\nclass Twice(cnngraph.Op):\n"
                                         "    type = 'twice_reg'\n    def forward(self, ctx, inputs, params):\n"
                                         "        return inputs[0] * 2\n")
    rc, text = _cli(capsys, ["ops", "twice_reg", "--plugin", str(tmp_path / "regfile.py")])
    assert rc == 0 and f"twice_reg  [{tmp_path / 'regfile.py'}]" in text, text
    assert "registered nothing" not in text
    assert fresh.ops["twice_reg"].plugin == str(tmp_path / "regfile.py")


def test_a_plugin_file_that_fails_after_register_op_leaves_nothing(fresh, tmp_path):
    (tmp_path / "half.py").write_text("import cnngraph\n\n@cnngraph.register_op\nclass Half(cnngraph.Op):\n"
                                      "    type = 'half_reg'\n\nraise ValueError('late')\n")
    with pytest.raises(PluginError, match="half.py:7' failed to import: ValueError: late"):
        cnngraph.load_plugin_file(tmp_path / "half.py")
    assert "half_reg" not in fresh.ops


# -- way 3: at run time, from Python -------------------------------------------------------------------
def test_register_op_and_register_plugin_at_run_time(fresh):
    @cnngraph.register_op
    class Negate(cnngraph.Op):
        """-x."""
        type = "rt_negate"

        def forward(self, ctx, inputs, params):
            return -inputs[0]

        def backward(self, ctx, gy):
            return [-gy], {}

    class Square(cnngraph.Op):
        type = "rt_square"

        def forward(self, ctx, inputs, params):
            ctx.save(x=inputs[0])
            return inputs[0] ** 2

        def backward(self, ctx, gy):
            return [2 * gy * ctx.saved["x"]], {}

    class MyPlugin:
        @cnngraph.hookimpl
        def cnngraph_register_ops(self, registry):
            registry.add(Square)

    cnngraph.register_plugin(MyPlugin(), name="my-runtime-plugin")
    assert fresh.ops["rt_square"].plugin == "my-runtime-plugin"
    assert fresh.plugins["my-runtime-plugin"] == "registered at run time"
    assert fresh.ops["rt_negate"].plugin == __name__
    spec = {"inputs": {"x": {"shape": [3]}}, "layers": [{"id": "n", "type": "rt_negate"},
                                                        {"id": "s", "type": "rt_square"}], "outputs": ["s"]}
    model = cnngraph.compile(spec, dtype="float64")
    x = np.array([[1.0, -2.0, 3.0]])
    np.testing.assert_allclose(model.forward({"x": x}, grad=True)["s"], x ** 2)
    grads = model.backward({"s": np.ones_like(x)})
    np.testing.assert_allclose(grads["x"], 2 * x)


def test_register_op_rejects_non_ops(fresh):
    with pytest.raises(PluginError, match="not a cnngraph.Op subclass"):
        cnngraph.register_op(object)


# -- errors name the plugin ----------------------------------------------------------------------------
def test_plugin_file_that_fails_to_import_names_file_and_line(fresh):
    with pytest.raises(PluginError, match=r"plugin file '.*import_error.py:3' failed to import: "
                                          r"ModuleNotFoundError: No module named 'cnngraph_no_such_module_xyz'"):
        cnngraph.load_plugin_file(PLUGINS / "import_error.py")
    with pytest.raises(PluginError, match=r"syntax_error.py:4' failed to import: SyntaxError"):
        cnngraph.load_plugin_file(PLUGINS / "syntax_error.py")
    with pytest.raises(PluginError, match=r"plugin file 'nope/missing.py' does not exist"):
        cnngraph.load_plugin_file("nope/missing.py")


def test_spec_naming_a_broken_plugin_file_is_a_located_problem(fresh, tmp_path):
    (tmp_path / "broken.py").write_text((PLUGINS / "import_error.py").read_text())
    spec = tmp_path / "s.yaml"
    spec.write_text("plugins: [./broken.py]\ninputs: {x: {shape: [4]}}\nlayers: [{id: r, type: relu}]\n"
                    "outputs: [r]\n")
    with pytest.raises(SpecError) as err:
        cnngraph.load_spec(spec, allow_plugins=True)
    p = err.value.problems[0]
    assert (p.path, p.line) == ("plugins[0]", 1) and "broken.py:3' failed to import" in p.message


def test_a_failed_spec_plugin_is_reported_once_not_again_per_layer(fresh, tmp_path):
    (tmp_path / "broken.py").write_text((PLUGINS / "import_error.py").read_text())
    spec = tmp_path / "s.yaml"
    spec.write_text("plugins: [./broken.py]\ninputs: {x: {shape: [4]}}\nlayers:\n  - {id: a, type: from_plugin}\n"
                    "  - {id: b, type: from_plugin}\n  - {id: c, type: other_plugin_op}\noutputs: [c]\n")
    with pytest.raises(SpecError) as err:
        cnngraph.load_spec(spec, allow_plugins=True)
    messages = [p.message for p in err.value.problems]
    assert len(messages) == 2 and "failed to import" in messages[0], messages
    assert ("unknown op type(s) 'from_plugin', 'other_plugin_op' in layer(s) 'a', 'b', 'c': they may come from "
            "the spec's plugins, which were not loaded") in messages[1]
    assert err.value.problems[1].line == 4


def test_duplicate_op_names_both_plugins_and_rolls_back(fresh):
    with pytest.raises(PluginError) as err:
        cnngraph.load_plugin_file(PLUGINS / "duplicate_relu.py")
    msg = str(err.value)
    assert "op 'relu' is registered twice" in msg
    assert "'cnngraph.plugins.activation'" in msg and "duplicate_relu.py'" in msg
    assert "dup_plugin_extra" not in fresh.ops                       # nothing half-registered
    assert fresh.ops["relu"].plugin == "cnngraph.plugins.activation"
    assert not any(n.endswith("duplicate_relu.py") for n in fresh.plugins)


def test_misspelled_hook_is_an_error_not_ignored(fresh):
    with pytest.raises(PluginError, match=r"unknown hook 'cnngraph_register_op' \(did you mean "
                                          r"'cnngraph_register_ops'\?\)"):
        cnngraph.load_plugin_file(PLUGINS / "typo_hook.py")


def test_wrong_forward_shape_names_plugin_op_and_layer(fresh):
    cnngraph.load_plugin_file(PLUGINS / "broken_ops.py")
    model = cnngraph.compile(one_layer("bad_forward_shape"))
    with pytest.raises(PluginError, match=r"op 'bad_forward_shape' \(plugin '.*broken_ops.py'\) returned shape "
                                          r"\(2, 1, 4, 4\) from forward at layer 'a', but its shape inference "
                                          r"promised \(2, 3, 4, 4\)"):
        model.forward({"x": np.zeros((2, 3, 4, 4), np.float32)})


def test_wrong_gradient_shape_names_plugin_op_and_layer(fresh):
    cnngraph.load_plugin_file(PLUGINS / "broken_ops.py")
    model = cnngraph.compile(one_layer("bad_backward_shape"))
    y = model.forward({"x": np.ones((2, 3, 4, 4), np.float32)}, grad=True)["a"]
    with pytest.raises(PluginError, match=r"op 'bad_backward_shape' \(plugin '.*broken_ops.py'\) returned a "
                                          r"gradient of shape \(2, 1, 4, 4\) for input 0 \('x'\) at layer 'a', "
                                          r"expected \(2, 3, 4, 4\)"):
        model.backward({"a": np.ones_like(y)})


def test_exception_inside_a_plugin_op_names_layer_and_plugin(fresh):
    class Crashes(cnngraph.Op):
        type = "crashes"

        def forward(self, ctx, inputs, params):
            raise ValueError("boom")

    cnngraph.register_plugin(type("P", (), {"cnngraph_register_ops": staticmethod(
        cnngraph.hookimpl(lambda registry: registry.add(Crashes)))})(), name="crash-plugin")
    model = cnngraph.compile(one_layer("crashes"))
    with pytest.raises(RunError, match=r"while running a \(crashes, plugin 'crash-plugin'\) on \(1, 3, 4, 4\) "
                                       r"at test_plugins.py:\d+: ValueError: boom"):
        model.forward({"x": np.zeros((1, 3, 4, 4), np.float32)})


def test_failing_hook_names_plugin_and_hook(fresh):
    class Bad:
        @cnngraph.hookimpl
        def cnngraph_register_ops(self, registry):
            raise RuntimeError("cannot build tables")

    with pytest.raises(PluginError, match=r"plugin 'bad-hooks' failed in cnngraph_register_ops: RuntimeError: "
                                          r"cannot build tables"):
        cnngraph.register_plugin(Bad(), name="bad-hooks")


# -- YAML is always read safely ----------------------------------------------------------------------
@pytest.mark.parametrize("tag", ["!!python/object/apply:os.system ['echo pwned']",
                                 "!!python/object:collections.OrderedDict {}",
                                 "!!python/name:os.system ''"])
def test_python_yaml_tags_are_rejected_with_a_location(tmp_path, tag):
    spec = tmp_path / "evil.yaml"
    spec.write_text(f"inputs:\n  x: {{shape: [3]}}\nlayers:\n  - {{id: a, type: relu, p: {tag}}}\noutputs: [a]\n")
    with pytest.raises(SpecError) as err:
        cnngraph.load_spec(spec, allow_plugins=True)
    p = err.value.problems[0]
    assert p.file == str(spec) and p.line == 4
    assert "python/" in p.message and "not allowed" in p.message


# -- every broken plugin, through the command line: rc 1, the plugin and op named, no traceback --------
def _cli(capsys, argv):
    rc = main(argv)                                   # an exception escaping main would fail the test
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return rc, out + err


@pytest.mark.parametrize("plugins,needles", [
    (["import_error.py"], ["plugin file '", "import_error.py:3' failed to import"]),
    (["duplicate_relu.py"], ["op 'relu' is registered twice", "'cnngraph.plugins.activation'", "duplicate_relu.py'"]),
    (["good_layers.py", "duplicate_of_good_layers.py"],
     ["op 'scaled_tanh' is registered twice", "good_layers.py'", "duplicate_of_good_layers.py'"]),
    (["typo_hook.py"], ["typo_hook.py'", "unknown hook 'cnngraph_register_op'"]),
])
def test_broken_plugin_files_on_the_cli(fresh, capsys, plugins, needles):
    argv = ["ops"] + [a for p in plugins for a in ("--plugin", str(PLUGINS / p))]
    rc, text = _cli(capsys, argv)
    assert rc == 1
    for needle in needles:
        assert needle in text, text


def _train_spec(tmp_path, op_type):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((16, 3, 4, 4)).astype(np.float32), y=rng.integers(0, 2, 16))
    (tmp_path / "ops.py").write_text((PLUGINS / "more_broken_ops.py").read_text())
    spec = tmp_path / "net.yaml"
    spec.write_text(textwrap.dedent(f"""
        name: t
        plugins: [./ops.py]
        inputs: {{x: {{shape: [3, 4, 4]}}}}
        layers:
          - {{id: c, type: conv2d, out_channels: 3, kernel_size: 1}}
          - {{id: a, type: {op_type}}}
          - {{id: f, type: flatten}}
          - {{id: logits, type: dense, out_features: 2}}
        outputs: [logits]
        train: {{data: {{dataset: npz, path: d.npz}}, epochs: 1, batch_size: 8}}
    """))
    return spec


@pytest.mark.parametrize("op_type,command,needle", [
    ("grad_count", "train", "op 'grad_count' (plugin '{p}') returned 2 input gradients from backward at layer 'a', "
                            "expected 1"),
    ("backward_raises", "train", "while differentiating a (backward_raises, plugin '{p}')"),
    ("infer_shape_crashes", "validate", "(layer 'a') infer_shape of op 'infer_shape_crashes' (plugin '{p}', "
                                        "ops.py:34) raised IndexError: list index out of range"),
    ("flops_crashes", "summary", "flops of op 'flops_crashes' (plugin '{p}', ops.py:50) at layer 'a' raised TypeError: "
                                 "bad flops"),
])
def test_broken_ops_at_run_time_name_plugin_and_op(fresh, capsys, tmp_path, op_type, command, needle):
    spec = _train_spec(tmp_path, op_type)
    argv = [command, str(spec), "--allow-plugins"] + (["--out", str(tmp_path / "run"), "--quiet"]
                                                      if command == "train" else [])
    rc, text = _cli(capsys, argv)
    assert rc == 1
    assert needle.format(p=tmp_path / "ops.py") in text, text


def test_infer_shape_crash_is_a_located_problem_in_python(fresh):
    cnngraph.load_plugin_file(PLUGINS / "more_broken_ops.py")
    with pytest.raises(SpecError) as err:
        cnngraph.load_spec(one_layer("infer_shape_crashes"))
    p = err.value.problems[0]
    assert p.layer == "a" and "infer_shape of op 'infer_shape_crashes'" in p.message
    assert isinstance(err.value.problems, list) and len(err.value.problems) == 1


def test_guard_keeps_purposeful_shape_errors_and_wraps_once(fresh):
    relu = fresh.op("relu")
    assert relu.infer_shape._cnngraph_guarded
    registry._STATE = None
    reg = registry.get_registry()                          # registering again does not wrap twice
    assert reg.op("relu").infer_shape.__wrapped__.__name__ == "infer_shape"
    assert not getattr(reg.op("relu").infer_shape.__wrapped__, "_cnngraph_guarded", False)
    with pytest.raises(SpecError, match="kernel"):          # a ShapeError from a built-in passes unchanged
        cnngraph.load_spec(one_layer("conv2d", shape=(3, 2, 2), out_channels=1, kernel_size=5))


def test_op_without_a_type_is_told_to_set_it(fresh):
    class Nameless(cnngraph.Op):
        def forward(self, ctx, inputs, params):
            return inputs[0]

    with pytest.raises(PluginError, match=r"registered an op without a name \('Nameless': set its class "
                                          r"attribute `type`\)"):
        cnngraph.register_op(Nameless)


def test_duplicate_of_an_installed_plugin_names_its_package(tmp_path, monkeypatch, fresh):
    make_dist(tmp_path, "epdup", """
        import cnngraph

        class Twice(cnngraph.Op):
            type = "ep_twice"
            def forward(self, ctx, inputs, params):
                return inputs[0] * 2

        @cnngraph.hookimpl
        def cnngraph_register_ops(registry):
            registry.add(Twice)
    """)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry._STATE = None
    registry.get_registry()

    class Again(cnngraph.Op):
        type = "ep_twice"

        def forward(self, ctx, inputs, params):
            return inputs[0]

    with pytest.raises(PluginError, match=r"op 'ep_twice' is registered twice: by plugin 'epdup_ep' \(entry point "
                                          r"epdup \(package epdup 0.3\)\) and by plugin 'test_plugins'"):
        cnngraph.register_op(Again)


def test_a_plugin_specs_checkpoint_loads_from_anywhere_and_after_expand(fresh, tmp_path, monkeypatch, capsys):
    """The checkpoint finds the spec's plugin file next to the spec, not in the current directory, and
    `cnngraph expand` (which rewrites plugin paths for the output file) keeps the checkpoint usable."""
    work = tmp_path / "work"
    work.mkdir()
    for name in ("my_layers.py", "uses_my_layers.yaml"):
        (work / name).write_text((ROOT / "specs" / "examples" / name).read_text())
    model = cnngraph.compile(work / "uses_my_layers.yaml", allow_plugins=True)
    model.save(work / "saved")
    monkeypatch.chdir(tmp_path)                       # not the spec's folder
    loaded = cnngraph.load_model(work / "saved", allow_plugins=True)
    assert loaded.param_count() == model.param_count()
    assert main(["expand", str(work / "uses_my_layers.yaml"), "--allow-plugins", "-o", str(work / "exp.yaml")]) == 0
    capsys.readouterr()
    x = np.zeros((1, *model.spec.inputs["image"].shape), np.float32)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(work / "exp.yaml"), "--allow-plugins", "--params", str(work / "saved"),
                 "--input", str(tmp_path / "x.npy")]) == 0, capsys.readouterr().err


def test_a_plugin_that_registers_nothing_is_named_with_the_unknown_op(fresh, tmp_path, capsys):
    (tmp_path / "nothing.py").write_text("from cnngraph.op import Op\nclass CS(Op):\n    type = 'cs_nothing'\n"
                                         "def cnngraph_register_op(registry):   # misspelled, no @hookimpl\n"
                                         "    registry.add(CS)\n")
    (tmp_path / "net.yaml").write_text("name: n\ninputs: {x: {shape: [3, 4, 4]}}\n"
                                       "layers:\n  - {id: a, type: cs_nothing}\noutputs: [a]\n")
    rc, text = _cli(capsys, ["validate", str(tmp_path / "net.yaml"), "--plugin", str(tmp_path / "nothing.py")])
    assert rc == 1
    assert "unknown op type 'cs_nothing'" in text and "nothing.py' registered nothing" in text


def test_negative_flops_from_a_plugin_are_refused(fresh, tmp_path):
    from cnngraph.summary import summarize
    (tmp_path / "neg.py").write_text("import cnngraph\nfrom cnngraph.op import Op\nclass N(Op):\n    type = 'neg_flops'\n"
                                     "    def flops(self, in_shapes, out_shape):\n        return -2.5\n"
                                     "@cnngraph.hookimpl\ndef cnngraph_register_ops(registry):\n    registry.add(N)\n")
    registry.load_plugin_file(tmp_path / "neg.py")
    spec = cnngraph.load_spec({"name": "n", "inputs": {"x": {"shape": [3]}},
                               "layers": [{"id": "a", "type": "neg_flops"}], "outputs": ["a"]})
    with pytest.raises(PluginError, match=r"flops of op 'neg_flops' .* returned -2.5 at layer 'a'"):
        summarize(spec.graph)


def test_register_op_again_from_a_rerun_cell_replaces_it(fresh):
    from cnngraph.op import Op

    def define(factor):
        class NotebookOp(Op):
            type = "notebook_op"

            def forward(self, ctx, inputs, params):
                return inputs[0] * factor
        return NotebookOp

    first, second = define(1), define(2)
    cnngraph.register_op(first)
    cnngraph.register_op(second)                       # the same cell run again
    assert registry.get_registry().ops["notebook_op"] is second

    class Other(Op):
        type = "notebook_op"
    with pytest.raises(PluginError, match="registered twice"):
        cnngraph.register_op(Other)


@pytest.mark.parametrize("forward, backward, needle", [
    ("return inputs[0].astype('float64')", None, "returned float64 from forward at layer 'a' on float32 inputs"),
    ("return [inputs[0]]", None, "returned a list from forward at layer 'a'; expected one array"),
    ("return inputs[0] * 1", "return gy, {}", "returned (ndarray, dict) from backward at layer 'a'; expected the pair"),
    ("return inputs[0] * 1", "return [gy]", "returned a list of 1 from backward at layer 'a'; expected the pair"),
    ("return inputs[0] * 1", "return None", "returned a NoneType from backward at layer 'a'; expected the pair"),
])
def test_broken_forward_and_backward_results_are_named(fresh, tmp_path, forward, backward, needle):
    body = (f"import cnngraph\nfrom cnngraph.op import Op\nclass B(Op):\n    type = 'broken_result'\n"
            f"    def forward(self, ctx, inputs, params):\n        {forward}\n"
            f"    def backward(self, ctx, gy):\n        {backward or 'return [gy], {}'}\n"
            f"@cnngraph.hookimpl\ndef cnngraph_register_ops(registry):\n    registry.add(B)\n")
    (tmp_path / "broken_result.py").write_text(body)
    registry.load_plugin_file(tmp_path / "broken_result.py")
    model = cnngraph.compile({"name": "b", "inputs": {"x": {"shape": [3]}},
                              "layers": [{"id": "a", "type": "broken_result"}], "outputs": ["a"]})
    x = np.ones((2, 3), np.float32)
    with pytest.raises(PluginError, match=re.escape(needle)):
        model.forward({"x": x}, training=True)
        model.backward({"a": np.ones((2, 3), np.float32)})


class _Twice(cnngraph.Op):
    """2x, written badly on purpose in the ways ``mode`` says."""

    type = "test_twice"

    class Params(cnngraph.OpParams):
        mode: str = "good"

    def infer_shape(self, in_shapes):
        return in_shapes[0]

    def init_params(self, in_shapes, rng):
        return {"w": np.ones(1, np.float32)}

    def forward(self, ctx, inputs, params):
        (x,) = inputs
        if self.p.mode == "input" or (self.p.mode == "reuse" and ctx.can_overwrite(0)):
            x *= 2                      # wrong unless the engine said the input may be reused
            return x
        if self.p.mode == "param":
            params["w"] += 0            # a write into a trainable parameter
        return x * 2

    def backward(self, ctx, gy):
        if self.p.mode == "grad":
            gy *= 2
            return [gy], {"w": np.zeros(1, np.float32)}
        return [gy * 2], {"w": np.zeros(1, np.float32)}


@pytest.mark.parametrize("mode,message", [
    ("input", "wrote into an input or a parameter in place in forward at layer 'bad'"),
    ("param", "wrote into an input or a parameter in place in forward at layer 'bad'"),
    ("grad", "wrote into its incoming gradient gy in place in backward at layer 'bad'"),
])
def test_a_plugin_op_writing_in_place_is_stopped_at_the_write(fresh, mode, message):
    """conv feeds the plugin op and a relu branch: an in-place write would silently change the relu branch's
    input (or, in backward, a gradient shared with it); it is a PluginError naming the op instead."""
    fresh.add(_Twice)
    spec = {"name": "t", "inputs": {"x": {"shape": [1, 4, 4]}},
            "layers": [{"id": "conv", "type": "conv2d", "out_channels": 2, "kernel_size": 1},
                       {"id": "bad", "type": "test_twice", "inputs": ["conv"], "mode": mode},
                       {"id": "other", "type": "relu", "inputs": ["conv"]},
                       {"id": "sum", "type": "add", "inputs": ["bad", "other"]}],
            "outputs": ["sum"]}
    model = cnngraph.compile(spec)
    x = np.ones((2, 1, 4, 4), np.float32)
    with pytest.raises(cnngraph.errors.PluginError, match=message):
        model.forward({"x": x}, training=True)
        model.backward({"sum": np.ones((2, 2, 4, 4), np.float32)})
    assert all(p.flags.writeable for p in model.params.values())     # nothing left locked


def test_a_plugin_op_may_reuse_an_input_the_engine_hands_over(fresh):
    fresh.add(_Twice)
    spec = {"name": "t", "inputs": {"x": {"shape": [1, 4, 4]}},
            "layers": [{"id": "conv", "type": "conv2d", "out_channels": 2, "kernel_size": 1},
                       {"id": "reuse", "type": "test_twice", "mode": "reuse"}], "outputs": ["reuse"]}
    model = cnngraph.compile(spec)
    x = np.random.default_rng(0).standard_normal((2, 1, 4, 4)).astype(np.float32)
    want = 2 * model.forward({"x": x}, outputs=["conv"])["conv"]
    np.testing.assert_allclose(model.forward({"x": x})["reuse"], want, rtol=1e-6)


def test_a_checkpoint_says_when_its_plugin_file_changed_since_it_was_written(fresh, tmp_path):
    """Model.save and training checkpoints record each plugin file's sha256; loading after an edit warns
    (the weights would otherwise silently take the edited op's meaning)."""
    import warnings
    (tmp_path / "good_layers.py").write_text((PLUGINS / "good_layers.py").read_text())
    spec = tmp_path / "net.yaml"
    spec.write_text((PLUGINS / "uses_good_layers.yaml").read_text())
    model = cnngraph.compile(cnngraph.load_spec(spec, allow_plugins=True))
    model.save(tmp_path / "ck")
    with warnings.catch_warnings():
        warnings.simplefilter("error")              # unchanged: no warning
        cnngraph.load_model(tmp_path / "ck", allow_plugins=True)
    with (tmp_path / "good_layers.py").open("a") as f:
        f.write("\n# edited after training\n")
    with pytest.warns(UserWarning, match=r"plugin file .*good_layers\.py changed since the checkpoint was written"):
        cnngraph.load_model(tmp_path / "ck", allow_plugins=True)


def test_a_training_checkpoint_records_the_plugin_files_it_trained_with(fresh, tmp_path):
    import hashlib
    (tmp_path / "good_layers.py").write_text((PLUGINS / "good_layers.py").read_text())
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((16, 2, 4, 4)).astype(np.float32), y=rng.integers(0, 2, 16))
    spec = tmp_path / "net.yaml"
    spec.write_text(textwrap.dedent("""
        name: t
        plugins: [./good_layers.py]
        inputs: {x: {shape: [2, 4, 4]}}
        layers:
          - {id: act, type: scaled_tanh, a: 3.0}
          - {id: f, type: flatten}
          - {id: logits, type: dense, out_features: 2}
        outputs: [logits]
        train: {data: {dataset: npz, path: d.npz}, epochs: 1, batch_size: 8}
    """))
    cnngraph.train(cnngraph.load_spec(spec, allow_plugins=True), out=tmp_path / "run", quiet=True)
    from cnngraph.train.checkpoint import load_checkpoint, resolve_checkpoint
    meta = load_checkpoint(resolve_checkpoint(tmp_path / "run")).meta
    digest = hashlib.sha256((tmp_path / "good_layers.py").read_bytes()).hexdigest()
    assert meta["plugin_sha256"] == {"./good_layers.py": digest}
