"""The command's start-up and output: Ctrl-C while it imports, an output that cannot take some characters
or any more bytes: one line each, not a traceback."""
import os
import subprocess
import sys

import pytest

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


def test_output_the_terminal_cannot_encode_prints_as_question_marks(tmp_path):
    """An ASCII stdout (PYTHONIOENCODING=ascii, an old terminal): the table bars, '—' and non-ASCII paths
    must not end the command with a UnicodeEncodeError."""
    import os
    import shutil
    spec = tmp_path / "sp€c.yaml"
    shutil.copy("specs/digits_cnn.yaml", spec)
    env = {**os.environ, "PYTHONIOENCODING": "ascii"}
    for argv in (["summary", str(spec)], ["ops"], ["validate", str(spec)]):
        run = subprocess.run([sys.executable, "-m", "cnngraph.cli", *argv], capture_output=True, env=env)
        assert run.returncode == 0 and b"Traceback" not in run.stderr, (argv, run.stderr.decode())
    assert run.stdout.startswith(b"OK   ") and b"sp?c.yaml" in run.stdout


class _Full:
    """A standard output on a full disk (as `> /dev/full`)."""

    def __init__(self, error=OSError(28, "No space left on device")):
        self.error = error

    def write(self, text):
        raise self.error

    def flush(self):
        pass


def test_standard_output_that_cannot_be_written_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _Full())
    assert cli.main(["ops"]) == 1
    assert capsys.readouterr().err == "error: cannot write to standard output: No space left on device\n"
    monkeypatch.setattr(sys, "stdout", _Full(BrokenPipeError(32, "Broken pipe")))   # `| head`: quiet
    assert cli.main(["ops"]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_short_output_to_a_full_disk_is_reported_before_exit():
    """A few lines stay in the buffer until the command ends: the failure comes when they are flushed."""
    with open("/dev/full", "w") as full:
        run = subprocess.run([sys.executable, "-m", "cnngraph.cli", "validate", "specs/lenet5.yaml"], stdout=full,
                             stderr=subprocess.PIPE, text=True)
    assert run.returncode == 1 and run.stderr == "error: cannot write to standard output: No space left on device\n"


def test_python_dash_m_cnngraph_runs_the_cli():
    """For a venv that sees cnngraph (--system-site-packages) but has no `cnngraph` script of its own."""
    run = subprocess.run([sys.executable, "-m", "cnngraph", "ops", "relu"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("relu  [cnngraph.plugins.activation]"), run.stderr
    run = subprocess.run([sys.executable, "-m", "cnngraph", "ops", "no_such_op"], capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.startswith("error: unknown op type 'no_such_op'")
