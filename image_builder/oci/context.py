"""Build contexts: the files every image build copies in, and their modes.

OCI_FORMAT versions the layout of contexts and Containerfiles (part of every image's
configuration digest); `slim.py` goes into each context as the install steps' pruner.
"""

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

OCI_FORMAT = 2
SLIM_SCRIPT = Path(__file__).resolve().parent.parent / "slim.py"


def add_slimming(requirements: Path, user_requirements: Sequence[str]) -> None:
    """slim.py and the requirements whose modules it compiles in full, for the deps step."""
    shutil.copy2(SLIM_SCRIPT, requirements / "slim.py")
    (requirements / "requirements-user.txt").write_text(file_lines(user_requirements))


def file_lines(items: Sequence[str]) -> str:
    return "".join(f"{item}\n" for item in items)


def normalise_modes(root: Path) -> None:
    """Files world-readable, folders world-searchable: the image user owns none of the code."""
    for current, dirs, files in os.walk(root):
        for name in dirs:
            path = Path(current) / name
            if not path.is_symlink():
                path.chmod(0o755)
        for name in files:
            path = Path(current) / name
            if not path.is_symlink():
                path.chmod(0o755 if path.stat().st_mode & 0o111 else 0o644)
