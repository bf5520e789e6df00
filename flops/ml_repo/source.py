"""Gets an ML repository: a git URL or local path, at a branch, tag or commit.

A local folder that is not a git repository is used as it is (handy while writing code);
everything else is cloned with GitPython into the folder the caller names (the builder: its
private work folder, removed with the build), and the commit that was checked out is
recorded so a training can name exactly what it ran. Which URLs a project may name is the
manager's policy (`flops_manager.sources`); here git itself is held to the plain transports
(`GIT_ALLOW_PROTOCOL`): no `ext::` or `fd::` helper runs, not even from a submodule.
"""

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import git

# The transports git may use for a clone or fetch; remote helpers (ext, fd) are not among them.
GIT_PROTOCOLS = "https:http:ssh:git:file"
GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": GIT_PROTOCOLS}


class RepositoryError(ValueError):
    """The repository cannot be fetched or the reference does not exist."""


@dataclass(frozen=True)
class FetchedRepository:
    path: Path
    url: str
    commit: str


def checkout_key(url: str) -> str:
    """The name of `url`'s checkout in a cache (and of the lock that guards it)."""
    local = Path(url).expanduser()
    source = str(local.resolve()) if local.is_dir() else url
    return hashlib.sha256(source.encode()).hexdigest()[:16]


def fetch_repository(url: str, ref: str | None, cache_dir: Path) -> FetchedRepository:
    """Check out `ref` (default: the default branch) of `url` and name the commit."""
    local = Path(url).expanduser()
    if local.is_dir() and not (local / ".git").exists() and not ref:
        return FetchedRepository(path=local.resolve(), url=str(local.resolve()), commit="")
    source = str(local.resolve()) if local.is_dir() else url
    checkout = cache_dir / checkout_key(url)
    try:
        if (checkout / ".git").is_dir():
            repo = git.Repo(checkout)
            with repo.git.custom_environment(**GIT_ENV):
                repo.remotes.origin.fetch(tags=True, prune=True)
        else:
            checkout.parent.mkdir(parents=True, exist_ok=True)
            repo = git.Repo.clone_from(source, checkout, env=GIT_ENV)
        target = ref or "origin/HEAD"
        commit = _resolve(repo, target)
        repo.git.checkout("--force", "--detach", commit)
        repo.git.clean("-xdf")
    except git.GitCommandError as error:
        raise RepositoryError(
            f"cannot fetch {url}" + (f" at {ref}" if ref else "") + f": {git_reason(error)}"
        ) from error
    except (git.exc.UnsafeProtocolError, git.exc.UnsafeOptionError) as error:
        raise RepositoryError(f"cannot fetch {url}: git refuses this transport or option ({error})") from error
    return FetchedRepository(path=checkout, url=source, commit=commit)


def git_reason(error: git.GitCommandError) -> str:
    """git's own reason for a failed command, whole: its `fatal:`/`error:` lines, else all it said.

    GitPython wraps stderr as `stderr: '...'`; the wrapping is removed, nothing is cut.
    """
    text = str(error.stderr or "").strip()
    text = text.removeprefix("stderr:").strip()
    if len(text) >= 2 and text[0] == text[-1] == "'":
        text = text[1:-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reasons = [line for line in lines if re.match(r"(fatal|error|remote: error|ERROR):", line)]
    return " ".join(reasons or lines) or f"git exited with status {error.status}"


def _resolve(repo: git.Repo, ref: str) -> str:
    for candidate in (f"origin/{ref}", ref):
        try:
            return str(repo.commit(candidate).hexsha)
        except (git.BadName, ValueError, git.GitCommandError):
            continue
    raise RepositoryError(f"no branch, tag or commit named '{ref}' in {repo.remotes.origin.url}")
