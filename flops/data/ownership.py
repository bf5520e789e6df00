"""Who may train on a node's data tag: the owner written next to the data.

Each tag folder (`<node>/<tag>/`) may hold `flops-tag.json`: `{"owner": CUSTOMER, "shared": false}`.
A project may use a tag only where its customer is the owner, or the tag is marked shared.
A folder without the file (made by hand, or by `flops data partition` without `--owner`)
belongs to the operator: `Admin`, FLOps's default customer, which only the admin token
submits for. An unreadable or invalid file belongs to nobody. The file is metadata, not
data: learners read only the Parquet files beside it.
"""

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

TAG_META_FILE = "flops-tag.json"
# FLOps's default customerID: what the admin submits for, and who owns unmarked data.
OPERATOR = "Admin"
NOBODY = ""


class TagOwnership(BaseModel):
    model_config = ConfigDict(extra="ignore")

    owner: str = Field(default=OPERATOR, max_length=64)
    shared: bool = False

    def usable_by(self, customer: str) -> bool:
        """Whether a project of `customer` may train on this tag."""
        return self.shared or (self.owner != NOBODY and self.owner == customer)


def read_ownership(tag_dir: Path) -> TagOwnership:
    """The ownership of the tag folder `tag_dir` (the operator's when it has no file)."""
    path = tag_dir / TAG_META_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return TagOwnership()
    except (OSError, UnicodeDecodeError):
        return TagOwnership(owner=NOBODY)
    try:
        return TagOwnership.model_validate(json.loads(text))
    except (ValueError, ValidationError):
        return TagOwnership(owner=NOBODY)


def write_ownership(tag_dir: Path, ownership: TagOwnership) -> None:
    """Record who owns the tag folder `tag_dir` (atomically: a reader never sees half a file)."""
    tag_dir.mkdir(parents=True, exist_ok=True)
    temporary = tag_dir / f".{TAG_META_FILE}.tmp"
    temporary.write_text(ownership.model_dump_json(), encoding="utf-8")
    os.replace(temporary, tag_dir / TAG_META_FILE)
