"""`python -m image_builder.inference`: an inference-server image from a registered MLflow model.

    python -m image_builder.inference --tracking-uri http://127.0.0.1:7027 \\
        --model-uri models:/digits/3 --registry HOST:PORT --customer acme --project digits \\
        [--platforms linux/amd64] [--base-image IMAGE] [--ca-bundle FILE] [--pip-index-url URL] \\
        [--pip-find-links DIR] [--no-tls-verify] [--registry-auth-file FILE] [--force]

Builds and pushes `<registry>/<customer>/<project>/inference:<model version>` (skipped when
the registry has it, unless --force) and prints the reference. The image serves MLflow's
scoring protocol on port 8080: `GET /ping`, `POST /invocations`.
"""

import argparse
import sys
from pathlib import Path

from image_builder.oci import DEFAULT_BASE_IMAGE, OciOptions, build_inference_image, pip_settings_from_host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image_builder.inference", description=__doc__.split("\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--model-uri", required=True, help="models:/NAME/VERSION or models:/NAME@ALIAS")
    parser.add_argument("--registry", required=True)
    parser.add_argument("--customer", default="admin")
    parser.add_argument("--project", required=True)
    parser.add_argument("--platforms", default="linux/amd64")
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--ca-bundle", type=Path)
    parser.add_argument("--pip-index-url")
    parser.add_argument("--pip-find-links", action="append", type=Path, default=[])
    parser.add_argument("--no-host-pip-settings", dest="host_pip_settings", action="store_false")
    parser.add_argument("--tls-verify", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--registry-auth-file", type=Path)
    parser.add_argument("--engine", choices=["buildah", "docker"], default="buildah")
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--force", action="store_true", help="build even when the registry has the tag")
    args = parser.parse_args(argv)
    host = pip_settings_from_host() if args.host_pip_settings else {}
    try:
        options = OciOptions(
            registry=args.registry,
            platforms=tuple(p.strip() for p in args.platforms.split(",") if p.strip()),
            base_image=args.base_image,
            ca_bundle=args.ca_bundle or host.get("ca_bundle"),
            pip_index_url=args.pip_index_url or host.get("pip_index_url"),
            pip_extra_index_urls=host.get("pip_extra_index_urls", ()),
            pip_find_links=tuple(args.pip_find_links) or host.get("pip_find_links", ()),
            tls_verify=args.tls_verify,
            registry_auth_file=args.registry_auth_file,
            engine=args.engine,
        )
        ref = build_inference_image(
            args.tracking_uri, args.model_uri, args.registry, args.customer, args.project, options,
            cache_dir=args.cache_dir, force=args.force,
        )  # fmt: skip
    except (ValueError, RuntimeError, OSError) as error:
        print(f"inference image: {error}", file=sys.stderr)
        return 1
    print(ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
