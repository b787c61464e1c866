"""statekeeper's fuzz suite, driven by the service descriptors: see README.md."""
