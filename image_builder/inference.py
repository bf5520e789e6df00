"""`python -m image_builder.inference`: the inference-server image of a registered model.

The command the manager runs after training; see `image_builder.oci.inference` for its
arguments, the image and the result file (`{"image": REF}` or `{"error": MESSAGE}`).
"""

import sys

from image_builder.oci.inference import main

if __name__ == "__main__":
    sys.exit(main())
