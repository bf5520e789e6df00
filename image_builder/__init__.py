"""FLOps image builder: turns an ML repository at a commit into what the platform runs.

One build is one process (`flops-image-builder`, `image_builder.main`): the shared source
stage fetches and checks the repository, then a target builds from it. The local target
builds no container images: it snapshots the repository and builds (or reuses) two cached
Python environments, one for learners (no MLflow) and one for the aggregator (with the
platform's MLflow). The OCI target builds learner and aggregator images into a registry.
Either reports a `flops.build.BuildResult`.

    main            arguments, target choice, result file (BuildOutcome) and events
    settings        BuilderSettings: the environment, read once in main()
    stages          timed stages, StageFailed and whole-reason error messages
    source          the source stage: fetch, check (size, symlinks, contract), dependencies
    local           the local target: code snapshot and cached environments
    environments    platform copy, installers (uv or pip), cached environments
    dependencies    the repository's dependency file, fitted to the platform
    files           locks, atomic writes, repository walks, digests
    containerfiles  Containerfile templates of the OCI images
    slim            prunes and byte-compiles image environments (runs inside builds)
    oci/            the OCI target, inference and base images (see image_builder.oci)
    inference       `python -m image_builder.inference` (image_builder.oci.inference)
"""
