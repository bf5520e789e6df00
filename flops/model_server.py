"""A registered model behind MLflow's scoring server, in one process.

`mlflow models serve --env-manager local` starts two interpreters: its command line, which
imports MLflow's CLI and downloads the model, then `uvicorn mlflow.pyfunc.scoring_server.app:app`,
which imports MLflow again and loads the model. This module does both in one process: the same
app (`mlflow.pyfunc.scoring_server.init`, so the same routes: `/ping`, `/health`, `/version`,
`/invocations`), about 3 s sooner on a 2-core machine (MLflow's CLI alone imports in 3.4 s).

The manager runs it from the build's aggregator environment (MLflow, and the model's flavour,
are there); the inference image, which has MLflow but not FLOps, keeps `mlflow models serve`.

    python -m flops.model_server --model-uri models:/NAME/VERSION --host 127.0.0.1 --port 8080
"""

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flops.model_server", description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", required=True, help="models:/NAME/VERSION, runs:/..., or a local folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)

    import uvicorn
    from mlflow.pyfunc import scoring_server

    app = scoring_server.init(scoring_server.load_model_with_mlflow_config(args.model_uri))
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
