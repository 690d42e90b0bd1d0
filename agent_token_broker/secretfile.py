"""Where a shared-secret file may live: nobody else may have written it.

Used for ``Broker__ManagedIdentityEndpoint__SecretFile``: whoever knows that secret gets
agent tokens from ``/msi/token``, so a secret someone else planted (e.g. in a directory they
created under ``/tmp`` before the broker started) must never be accepted.

* When the broker generates the file, its directory must be owned by the broker's user
  and not writable by group or others.
* An existing file must be a regular file owned by the broker's user or root and not
  writable by group or others, in a directory owned by the broker's user or root that is
  not writable by group or others -- unless that directory is sticky (``/tmp``-like, or
  Kubernetes' secret volumes, mode 1777), where others cannot replace a file they do not
  own. Symlinks are followed (Kubernetes points the name at ``..data/``); the directory of
  the name and of the target are both checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent_token_broker.settings import ConfigError

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def _directory_problem(directory: Path, *, ours_only: bool) -> str | None:
    try:
        st = os.stat(directory)
    except OSError as exc:
        return f"cannot inspect its directory {directory} ({exc.strerror or type(exc).__name__})"
    uid = os.geteuid()
    owners = (uid,) if ours_only else (uid, 0)
    if st.st_uid not in owners:
        who = "the broker's user" if ours_only else "the broker's user or root"
        return f"its directory {directory} is owned by uid {st.st_uid}, not {who}"
    if st.st_mode & _OTHERS_WRITE and (ours_only or not st.st_mode & stat.S_ISVTX):
        return f"its directory {directory} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def secret_file_problem(path: Path) -> str | None:
    """Why the secret file at ``path`` (existing or to be generated) cannot be trusted, or None."""
    if not path.exists():
        return _directory_problem(path.parent, ours_only=True) if path.parent.exists() else None
    problem = _directory_problem(path.parent, ours_only=False)
    if problem is not None:
        return problem
    target = path.resolve()
    if target.parent != path.parent:
        problem = _directory_problem(target.parent, ours_only=False)
        if problem is not None:
            return problem
    st = os.stat(target)
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if st.st_uid not in (os.geteuid(), 0):
        return f"it is owned by uid {st.st_uid}, not the broker's user or root"
    if st.st_mode & _OTHERS_WRITE:
        return f"it is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def check_secret_file(path: Path, key: str) -> None:
    """:raises ConfigError: naming ``key`` when :func:`secret_file_problem` finds a problem."""
    problem = secret_file_problem(path)
    if problem is not None:
        raise ConfigError([f"{key}: refusing the secret file {path}: {problem}"])
