"""nfvi.errors: one_line, guard() and fail(), including on real Hydra/OmegaConf errors."""

import pytest

from nfvi.errors import (
    EXIT_USAGE,
    RAISE,
    CheckpointError,
    ConfigError,
    NfviError,
    fail,
    guard,
    one_line,
)


class _Code3(NfviError):
    exit_code = 3


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("NFVI_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)


@pytest.fixture
def raising():
    token = RAISE.set(True)
    yield
    RAISE.reset(token)


# -- one_line -------------------------------------------------------------------------------
def test_one_line_nfvi_error_joins_lines():
    assert one_line(ConfigError("bad value\nfix it")) == "bad value fix it"
    assert one_line(NfviError("plain")) == "plain"


def test_one_line_generic_error():
    msg = one_line(ValueError("boom\nsecond line"))
    assert msg == "ValueError: boom (set NFVI_DEBUG=1 for the traceback)"


def test_one_line_generic_error_without_message():
    assert one_line(KeyError()) == "KeyError: KeyError (set NFVI_DEBUG=1 for the traceback)"


# -- guard ----------------------------------------------------------------------------------
def test_guard_without_error_does_nothing(capsys):
    with guard():
        x = 1
    assert x == 1
    assert capsys.readouterr().err == ""


def test_guard_nfvi_error_exits_2_with_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        with guard():
            raise CheckpointError("no checkpoint\nin there")
    assert info.value.code == EXIT_USAGE == 2
    captured = capsys.readouterr()
    assert captured.err == "error: no checkpoint in there\n"
    assert captured.out == ""


def test_guard_subclass_exit_code(capsys):
    with pytest.raises(SystemExit) as info:
        with guard():
            raise _Code3("device gone")
    assert info.value.code == 3
    assert capsys.readouterr().err == "error: device gone\n"


def test_guard_generic_error(capsys):
    with pytest.raises(SystemExit) as info:
        with guard():
            raise ValueError("bad shape")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: ValueError: bad shape (set NFVI_DEBUG=1 for the traceback)\n"
    assert err.count("\n") == 1


@pytest.mark.parametrize("var", ["NFVI_DEBUG", "HYDRA_FULL_ERROR"])
def test_guard_reraises_in_debug(monkeypatch, capsys, var):
    monkeypatch.setenv(var, "1")
    with pytest.raises(ValueError, match="bad shape"):
        with guard():
            raise ValueError("bad shape")
    assert capsys.readouterr().err == ""


def test_guard_debug_zero_is_off(monkeypatch):
    monkeypatch.setenv("NFVI_DEBUG", "0")
    with pytest.raises(SystemExit):
        with guard():
            raise ValueError("x")


def test_guard_under_raise_passes_nfvi_error_through(raising, capsys):
    err = _Code3("as is")
    with pytest.raises(_Code3) as info:
        with guard():
            raise err
    assert info.value is err
    assert capsys.readouterr().err == ""


def test_guard_under_raise_wraps_other_errors(raising, capsys):
    cause = ValueError("bad shape")
    with pytest.raises(NfviError) as info:
        with guard():
            raise cause
    assert type(info.value) is NfviError
    assert info.value.__cause__ is cause
    assert str(info.value) == "ValueError: bad shape (set NFVI_DEBUG=1 for the traceback)"
    assert capsys.readouterr().err == ""


def test_guard_lets_keyboard_interrupt_through(capsys):
    with pytest.raises(KeyboardInterrupt):
        with guard():
            raise KeyboardInterrupt
    assert capsys.readouterr().err == ""


# -- fail -----------------------------------------------------------------------------------
def test_fail_exits_with_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        fail("nothing to do")
    assert info.value.code == 2
    assert capsys.readouterr().err == "error: nothing to do\n"


def test_fail_custom_code(capsys):
    with pytest.raises(SystemExit) as info:
        fail("gone", code=5)
    assert info.value.code == 5
    assert capsys.readouterr().err == "error: gone\n"


def test_fail_under_raise(raising, capsys):
    with pytest.raises(NfviError) as info:
        fail("nothing to do", code=5)
    assert type(info.value) is NfviError
    assert str(info.value) == "nothing to do"
    assert capsys.readouterr().err == ""


# -- real Hydra / OmegaConf errors ----------------------------------------------------------
def _compose_error(override: str) -> BaseException:
    from hydra import compose, initialize_config_dir

    from nfvi.config import config_dir, register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        with pytest.raises(Exception) as info:
            compose("config", overrides=[override])
    return info.value


def test_one_line_hydra_unknown_option():
    msg = one_line(_compose_error("flow=nope"))
    assert msg.startswith("unknown option 'flow/nope'; choose flow= one of: ")
    options = msg.split("one of: ", 1)[1].split(", ")
    assert {"planar", "radial", "iaf", "householder"} <= set(options)
    assert options == sorted(options)
    assert "\n" not in msg
    assert "Config search path" not in msg


def test_one_line_omegaconf_bad_type():
    msg = one_line(_compose_error("K=abc"))
    assert "\n" not in msg
    assert msg.startswith("Error merging override K=abc: ")
    assert "'abc'" in msg
    assert "Integer" in msg
    assert "(key K)" in msg


def test_one_line_omegaconf_unknown_key():
    msg = one_line(_compose_error("no_such_key=1"))
    assert msg == (
        "unknown key 'no_such_key'; nfvi train --cfg job lists the keys "
        "(misspelt? a group is chosen with group=option)"
    )


def test_guard_on_hydra_error(capsys):
    ex = _compose_error("no_such_key=1")
    with pytest.raises(SystemExit) as info:
        with guard():
            raise ex
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown key 'no_such_key'")
    assert err.count("\n") == 1
