"""The quiet start-up's environment defaults and its stderr filter."""

import os
import re

from lmsgd import _quiet


def test_defaults_never_override_the_user_and_keep_accelerators():
    env = {}
    _quiet.quiet_environment(env, has_accelerator=False)
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "2", "JAX_PLATFORMS": "cpu"}
    env = {"JAX_PLATFORMS": "cuda", "TF_CPP_MIN_LOG_LEVEL": "0"}
    _quiet.quiet_environment(env, has_accelerator=False)
    assert env == {"JAX_PLATFORMS": "cuda", "TF_CPP_MIN_LOG_LEVEL": "0"}
    env = {}
    _quiet.quiet_environment(env, has_accelerator=True)  # a GPU/TPU machine: JAX decides
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "2"}


def test_accelerator_is_a_device_file(tmp_path):
    assert not _quiet.accelerator_present((str(tmp_path / "nvidia[0-9]*"),))
    (tmp_path / "nvidia0").touch()
    assert _quiet.accelerator_present((str(tmp_path / "nvidia[0-9]*"),))


def test_stderr_filter_drops_known_lines_at_the_file_descriptor_and_keeps_the_rest(capfd):
    with _quiet._stderr_without(re.compile("cudart_stub")):
        os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\n")  # as C++ does
        os.write(2, b"a real warning\n")
    assert capfd.readouterr().err == "a real warning\n"
