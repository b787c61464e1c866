"""Access control: who may call, on which namespace, to do what.

- `roles`: the role each RPC needs, read from the protos (`role_table()`).
- `permissions`: `Permission` (`acme:write`, `*:read`) and `Principal`.
- `credentials`: what a call presents (`Credentials`), the `Authenticator`
  interface and the chain that tries each source in turn.
- `tokens`, `jwt_tokens`, `mtls`: the three sources (static tokens file, JWTs,
  client certificates).
- `interceptor`: the auth layer (authenticate, resolve the namespace,
  check the role, end streams whose credential expires).
- `control`: everything the settings configure, with reload and file watching.
- `exposure`: refusing to serve the network without authentication.
- `audit`, `errors`, `files`: audit lines, error reasons, re-readable files.
"""
