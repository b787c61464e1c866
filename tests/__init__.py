"""The statekeeper test suite."""
