"""Base models: architectures, the registry of named models, fingerprints, MONAI bundles."""
