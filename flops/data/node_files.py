"""Node files: Parquet that `datasets` 3.x and 4.x both read with the same features.

`datasets` 4 records a table's features in the Parquet schema metadata (`huggingface`) with
feature types 3.x does not know (`List`), and 3.x then refuses the file ("Feature type 'List'
not found"). A node file therefore records only the features its Arrow types do not already
say (an `Image`, a `ClassLabel`, ...), written in the vocabulary both versions share:
`datasets` infers every other column from its Arrow type, as both versions do alike.
"""

import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

HF_METADATA_KEY = b"huggingface"

# The feature types `datasets` 3.x can read back (its `_FEATURE_TYPES`); 4.x reads them too.
PORTABLE_FEATURE_TYPES = frozenset(
    {
        "Value", "ClassLabel", "Translation", "TranslationVariableLanguages", "LargeList", "Sequence",
        "Array2D", "Array3D", "Array4D", "Array5D", "Audio", "Image", "Video", "Pdf",
    }
)  # fmt: skip

_LIST: Any = getattr(datasets, "List", None)  # datasets >= 4


def portable_feature(feature: Any) -> Any:
    """`feature` serialised with only `PORTABLE_FEATURE_TYPES` (a 4.x `List` becomes a `Sequence`)."""
    if isinstance(feature, dict):
        return {name: portable_feature(value) for name, value in feature.items()}
    if isinstance(feature, list | tuple):
        return [portable_feature(feature[0])]
    if _LIST is not None and isinstance(feature, _LIST):
        if isinstance(feature.feature, dict):
            # A list of structs: 3.x's `Sequence` of a dict means a struct of lists, `[dict]` is this.
            return [portable_feature(feature.feature)]
        encoded = {"feature": portable_feature(feature.feature), "_type": "Sequence"}
        if feature.length != -1:
            encoded["length"] = feature.length
        return encoded
    if isinstance(feature, datasets.LargeList):
        return {"feature": portable_feature(feature.feature), "_type": "LargeList"}
    return datasets.Features({"feature": feature}).to_dict()["feature"]


def node_file_metadata(features: datasets.Features, schema: pa.Schema) -> dict[bytes, bytes]:
    """The schema metadata of a node file: the features `schema`'s Arrow types do not imply."""
    inferred = datasets.Features.from_arrow_schema(schema.remove_metadata())
    declared = {name: portable_feature(feature) for name, feature in features.items() if inferred[name] != feature}
    if not declared:
        return {}
    return {HF_METADATA_KEY: json.dumps({"info": {"features": declared}}).encode()}


def write_node_file(dataset: datasets.Dataset, path: Path) -> None:
    """Write `dataset`'s rows (in their current order) to the Parquet file `path`."""
    table = dataset.with_format("arrow")[:]
    table = table.replace_schema_metadata(node_file_metadata(dataset.features, table.schema) or None)
    pq.write_table(table, path)
