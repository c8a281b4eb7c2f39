"""Processing algorithms of the ``cropclassifier`` provider."""
