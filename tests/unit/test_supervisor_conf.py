"""`make run`'s supervisord configuration and generated secrets (vterm_project/supervisor_conf.py,
devstack.LocalSecrets). The live behaviour (restarts, give-up, Ctrl-C) is tested in
tests/faults/test_make_run_supervisor.py."""

from __future__ import annotations

import shlex
import stat
import subprocess

import pytest
from supervisor.options import ServerOptions

from vterm_project.devstack import LocalSecrets, read_or_make_secret, stack_config_from_env
from vterm_project.supervisor_conf import PREFIX_SCRIPT, START_RETRIES, write_supervisor_conf


@pytest.fixture
def env(monkeypatch):
    for name in ("SECRET_KEY", "REDIS_URL", "DATABASE_URL", "PORT", "FLOWER_PORT", "VTERM_BACKENDS",
                 "VTERM_WEB_PROCESSES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_secrets_are_made_once_owner_only_and_distinct(env, tmp_path):
    first = LocalSecrets.load(tmp_path)
    again = LocalSecrets.load(tmp_path)
    assert first == again  # kept, not made anew at every start
    values = [first.secret_key, first.redis_password, first.flower_password, first.admin_password]
    assert len(set(values)) == 4 and all(len(v) >= 20 for v in values)
    assert first.secret_key != "insecure-dev-only-change-me" and len(first.secret_key) >= 50
    for file in LocalSecrets.FILES.values():
        assert stat.S_IMODE((tmp_path / file).stat().st_mode) == 0o600, file


def test_an_older_secret_file_is_made_owner_only(tmp_path):
    old = tmp_path / "admin-password"
    old.write_text("kept-from-before\n")
    old.chmod(0o644)
    assert read_or_make_secret(old) == "kept-from-before"
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


def test_make_run_uses_the_generated_secrets(env, tmp_path):
    local = LocalSecrets.load(tmp_path)
    cfg = stack_config_from_env(tmp_path, local)
    assert cfg.env()["SECRET_KEY"] == local.secret_key
    assert cfg.redis_url == f"redis://:{local.redis_password}@127.0.0.1:6390/0"
    assert cfg.flower_auth == f"admin:{local.flower_password}"
    env.setenv("SECRET_KEY", "the-operators-own")
    assert stack_config_from_env(tmp_path, local).env()["SECRET_KEY"] == "the-operators-own"


def _parsed(tmp_path):
    cfg = stack_config_from_env(tmp_path, LocalSecrets.load(tmp_path))
    path = write_supervisor_conf(cfg)
    options = ServerOptions()
    options.realize(["-c", str(path)])  # supervisord's own parser
    return cfg, path, options


def test_supervisord_runs_every_process_restarted_with_bounded_retries(env, tmp_path):
    cfg, path, options = _parsed(tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # passwords are in it
    assert options.nodaemon and options.logfile == "/dev/stdout"
    groups = {g.name: g for g in options.process_group_configs}
    procs = {p.name: p for p in cfg.processes()}
    assert set(groups) == set(procs) == {"redis", "web", "web-2", "backend-1", "backend-2", "beat", "scaler", "flower"}
    for name, group in groups.items():
        pc = group.process_configs[0]
        assert pc.autorestart is not False and pc.startretries == START_RETRIES
        assert pc.startsecs == procs[name].startsecs
        assert pc.stopasgroup and pc.killasgroup
        assert pc.stdout_logfile == "/dev/stdout" and pc.redirect_stderr
        # The program itself is exec'd by the prefixing bash line, with its argv intact (%h too).
        argv = shlex.split(pc.command)
        assert argv[:3] == ["/bin/bash", "-c", PREFIX_SCRIPT] and argv[3].strip() == name
        assert argv[4:] == procs[name].argv
        assert pc.environment == (procs[name].env or {})
    # Redis first, Flower last; stopped the other way round.
    assert min(groups.values(), key=lambda g: g.priority).name == "redis"
    assert all(groups["redis"].priority < groups[n].priority for n in groups if n != "redis")
    assert groups["flower"].process_configs[0].environment["FLOWER_BASIC_AUTH"] == cfg.flower_auth
    # Two web processes on the one port, started with the web, their metrics merged from files.
    assert groups["web-2"].priority == groups["web"].priority
    for name in ("web", "web-2"):
        assert procs[name].argv[1:] == ["-m", "vterm_project.web_listen", "127.0.0.1", str(cfg.port),
                                         "vterm_project.asgi:application"]
        assert groups[name].process_configs[0].environment == {"PROMETHEUS_MULTIPROC_DIR": str(cfg.prometheus_dir())}


def test_one_web_process_is_daphne_on_its_port_as_before(env, tmp_path):
    env.setenv("VTERM_WEB_PROCESSES", "1")
    cfg = stack_config_from_env(tmp_path, LocalSecrets.load(tmp_path))
    web = [p for p in cfg.processes() if p.name.startswith("web")]
    assert [(p.name, p.argv[1:], p.env) for p in web] == [
        ("web", ["-b", "127.0.0.1", "-p", str(cfg.port), "vterm_project.asgi:application"], {})]


def test_the_prefixing_line_execs_the_program_and_names_each_line(tmp_path):
    # What supervisord runs, on a small program: same pid as the bash it started (exec), and
    # its stdout and stderr come out whole, each line prefixed.
    program = ["/bin/sh", "-c", "echo pid=$$; echo out; echo err >&2; printf 'two\\nlines\\n'"]
    proc = subprocess.Popen(["/bin/bash", "-c", PREFIX_SCRIPT, "web  ", *program], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    out, _ = proc.communicate(timeout=30)
    lines = out.splitlines()
    assert sorted(lines[1:]) == sorted(["web   | out", "web   | err", "web   | two", "web   | lines"]), lines
    assert lines[0] == f"web   | pid={proc.pid}"
