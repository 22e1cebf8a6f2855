"""`autodeco serve` refuses settings it cannot serve with, with exit code 2 and one `error:`
line: bad numbers, ports and hosts at once, before the model loads; a port in use once it has."""

import socket

import pytest
from typer.testing import CliRunner

from autodeco.cli import app

runner = CliRunner()


def serve(*args):
    # heads that do not exist: a run that got past the checks would stop at loading them
    return runner.invoke(app, ["serve", "--heads", "/no/such/heads", *map(str, args)], env={"AUTODECO_API_KEY": None})


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--max-queue", 0), "--max-queue must be at least 1"),
        (("--max-batch-size", 0), "--max-batch-size must be at least 1"),
        (("--max-request-tokens", -5), "--max-request-tokens must be at least 1"),
        (("--max-connections", 0), "--max-connections must be at least 1"),
        (("--num-draft-tokens", 0), "--num-draft-tokens must be at least 1"),
        (("--body-timeout", 0), "--body-timeout must be a positive number of seconds"),
        (("--header-timeout", "nan"), "--header-timeout must be a positive number of seconds"),
        (("--keep-alive-timeout", "inf"), "--keep-alive-timeout must be a positive number of seconds"),
        (("--port", 99999), "--port 99999 is not a TCP port"),
        (("--port", -1), "--port -1 is not a TCP port"),
        (("--host", "no.such.host.invalid"), "--host 'no.such.host.invalid' does not resolve"),
    ],
)
def test_a_bad_serve_flag_is_one_error_line(args, fragment):
    result = serve(*args)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:") and fragment in lines[0], result.stderr


def test_a_port_in_use_is_one_error_line(tmp_path, base_dir):
    """Binding comes after loading (whose errors come first), so this one needs real heads."""
    heads = tmp_path / "heads"
    assert runner.invoke(app, ["init", "--base", str(base_dir), "--out", str(heads)]).exit_code == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        result = runner.invoke(app, ["serve", "--heads", str(heads), "--port", str(taken.getsockname()[1])])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]  # after transformers' loading bar
    assert result.exit_code == 2 and len(errors) == 1 and "cannot listen on 127.0.0.1 port" in errors[0] and "--port" in errors[0], result.stderr


def test_an_exposed_server_without_a_key_is_warned_about():
    exposed = serve("--host", "0.0.0.0", "--port", 0)
    assert exposed.stderr.startswith("warning: serving on 0.0.0.0 without --api-key") and "/no/such/heads" in exposed.stderr
    keyed = serve("--host", "0.0.0.0", "--port", 0, "--api-key", "k")
    loopback = serve("--port", 0)
    assert "warning" not in keyed.stderr + loopback.stderr and keyed.exit_code == loopback.exit_code == 2
