"""The command's start-up: Ctrl-C while it imports prints one line, not a traceback."""
import subprocess
import sys

from cnngraph import cli


def test_importing_the_command_loads_none_of_the_heavy_modules():
    # Python prints a traceback for a Ctrl-C outside main(): keep that window to the light imports.
    code = "import sys, cnngraph.cli; print(sorted(m for m in ('numpy', 'networkx', 'pydantic', 'pluggy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_ctrl_c_while_the_commands_load_is_one_line(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "build_parser", interrupted)
    assert cli.main(["validate", "x.yaml"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_the_lazy_api_names_and_submodules_resolve():
    import cnngraph
    assert callable(cnngraph.compile) and cnngraph.Model.__name__ == "Model"
    assert cnngraph.registry.get_registry is cnngraph.get_registry
    try:
        cnngraph.no_such_name
    except AttributeError as exc:
        assert "no_such_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_cnngraph_train_is_the_callable_package_whatever_is_imported_first():
    # The lazy name must not bind cnngraph.train to the bare function: cnngraph.train.<submodule> (and
    # mock.patch("cnngraph.train.loop....")) would then fail depending on import order.
    code = ("import cnngraph; f = cnngraph.train; import cnngraph.train.metrics; "
            "assert callable(cnngraph.train) and cnngraph.train.metrics.__name__ == 'cnngraph.train.metrics'; "
            "assert cnngraph.train is f; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr
