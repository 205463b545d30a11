"""Face detector backends, one module each (registered in :data:`distmtl.faces.detect.BACKENDS`)."""
