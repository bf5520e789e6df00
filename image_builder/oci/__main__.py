"""`python -m image_builder.oci base-image ...`: see `image_builder.oci.base_image`."""

from image_builder.oci.base_image import main

raise SystemExit(main())
