"""Where the CLI finds its URL and token: flags, then environment, then the saved login."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


def config_path() -> Path:
    """``$VTERM_CONFIG``, else ``$XDG_CONFIG_HOME/vterm/config.json`` (``~/.config/vterm/config.json``)."""
    if os.environ.get("VTERM_CONFIG"):
        return Path(os.environ["VTERM_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vterm" / "config.json"


def load_saved() -> dict[str, str]:
    path = config_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SystemExit(f"vterm: cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def save(url: str, token: str) -> Path:
    """Write the login, readable by its owner only (it holds a token)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"url": url, "token": token}, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)  # an existing file keeps its mode through O_CREAT
    os.replace(tmp, path)
    return path


@dataclass
class Settings:
    url: str
    token: str | None
    url_source: str
    token_source: str


def resolve(url_flag: str | None, token_flag: str | None) -> Settings:
    saved = load_saved()
    url, url_src = DEFAULT_URL, "default"
    for value, src in ((saved.get("url"), str(config_path())), (os.environ.get("VTERM_URL"), "VTERM_URL"),
                       (url_flag, "--url")):
        if value:
            url, url_src = value, src
    token, token_src = None, "none"
    for value, src in ((saved.get("token"), str(config_path())), (os.environ.get("VTERM_TOKEN"), "VTERM_TOKEN"),
                       (token_flag, "--token")):
        if value:
            token, token_src = value, src
    return Settings(url=url.rstrip("/"), token=token, url_source=url_src, token_source=token_src)
