"""Where `keydesk login` keeps its sign-in: $XDG_CONFIG_HOME/keydesk/credentials.json
(default ~/.config/keydesk/), readable by its owner only (0600, folder 0700). The token is
written nowhere else."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "keydesk" / "credentials.json"


def load() -> dict | None:
    try:
        data = json.loads(path().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("token") and data.get("url") else None


def save(data: dict) -> Path:
    target = path()
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkstemp creates the file 0600 before anything is written; rename makes it whole.
    fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def delete() -> bool:
    try:
        path().unlink()
    except FileNotFoundError:
        return False
    return True
