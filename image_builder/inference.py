"""`python -m image_builder.inference`: an inference-server image from a registered MLflow model.

    python -m image_builder.inference --tracking-uri http://127.0.0.1:7027 \\
        --model-uri models:/digits/3 --registry HOST:PORT --customer acme --project digits \\
        [--result-file PATH] [--force] [every OCI option of the image builder]

Builds and pushes `<registry>/<customer>/<project>/inference:<model version>` (skipped when
the registry has it, unless --force), prints the reference and writes `{"image": REF}` (or
`{"error": MESSAGE}`) to --result-file. The image serves MLflow's scoring protocol on port
8080: `GET /ping`, `POST /invocations`.
"""

import argparse
import sys
from pathlib import Path

from image_builder.files import write_json_atomic
from image_builder.oci import add_oci_arguments, build_inference_image, options_from_args


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image_builder.inference", description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--model-uri", required=True, help="models:/NAME/VERSION or models:/NAME@ALIAS")
    parser.add_argument("--project", required=True, help="third part of the image name")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--result-file", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="build even when the registry has the tag")
    add_oci_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
        ref = build_inference_image(
            args.tracking_uri, args.model_uri, options.registry, args.customer, args.project, options,
            cache_dir=args.cache_dir, force=args.force,
        )  # fmt: skip
    except Exception as error:  # one line for the manager, whatever failed (MLflow, buildah, registry)
        message = " ".join(str(error).split())
        print(f"inference image: {message}", file=sys.stderr)
        if args.result_file:
            write_json_atomic(args.result_file, {"error": message})
        return 1
    if args.result_file:
        write_json_atomic(args.result_file, {"image": ref})
    print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
