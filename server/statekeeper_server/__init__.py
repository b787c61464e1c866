"""The statekeeper server: gRPC services over pluggable stores."""
