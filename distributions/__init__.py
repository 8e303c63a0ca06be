"""Ready distribution YAML files shipped with the package (``local`` is the default and runs offline)."""
