"""Generated protobuf and gRPC stubs of the statekeeper.v1 API."""
