"""A node's privacy policy for statistics jobs: `privacy.yaml` beside its tag folders, owned by its data owner.

    min_count: 10        # a feature with fewer records: the node sends nothing of it
    min_bin_count: 5     # histogram bins (and quantile-sketch centroids) with fewer records are removed
    noise:               # optional: noise on what the node sends
      mechanism: laplace # or gaussian (with delta)
      epsilon: 1.0

No file: the defaults of `flops.statistics.PrivacyPolicy` (no filter beyond one record, no noise).
A file that cannot be read or does not validate is an error that names it: a node must not send
more than its owner allowed because of a typo.
"""

from pathlib import Path

import yaml
from pydantic import ValidationError

from flops.statistics import PolicyError, PrivacyPolicy

PRIVACY_FILE = "privacy.yaml"


def read_privacy_policy(node_dir: Path) -> PrivacyPolicy:
    path = node_dir / PRIVACY_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return PrivacyPolicy()
    except (OSError, UnicodeDecodeError) as error:
        raise PolicyError(f"{path}: cannot be read ({error}); fix it: the node sends nothing until then") from error
    try:
        loaded = yaml.safe_load(text)
        return PrivacyPolicy.model_validate({} if loaded is None else loaded)
    except (yaml.YAMLError, ValidationError) as error:
        first = str(error).splitlines()[0] if not isinstance(error, ValidationError) else error.errors()[0]["msg"]
        raise PolicyError(
            f"{path}: not a valid privacy policy ({first}); see docs/analytics.md for its fields"
        ) from error


def write_privacy_policy(node_dir: Path, policy: PrivacyPolicy) -> None:
    node_dir.mkdir(parents=True, exist_ok=True)
    (node_dir / PRIVACY_FILE).write_text(
        yaml.safe_dump(policy.model_dump(mode="json", exclude_none=True), sort_keys=True), encoding="utf-8"
    )
