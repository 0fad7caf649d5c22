"""Which commands make the backend read the shell's environment afterwards (workers/env_tracker.py)."""

import pytest

from workers.env_tracker import MAY_CHANGE_ENV


@pytest.mark.parametrize("text", ["export A=1", "cd /tmp && export A=1", ". ./venv/bin/activate", "source ~/.profile",
                                  "x=1; unset x", "(export A)", "declare -x B=2", "eval \"$(ssh-agent)\"",
                                  "if true; then export C=3; fi"])
def test_commands_that_may_change_the_environment(text):
    assert MAY_CHANGE_ENV.search(text)


@pytest.mark.parametrize("text", ["true", "echo export", "ls ./x", "echo a.b c", "cd /tmp", "exporter run",
                                  "git log --oneline"])
def test_commands_that_cannot(text):
    assert not MAY_CHANGE_ENV.search(text)
