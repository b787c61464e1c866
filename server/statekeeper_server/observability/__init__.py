"""What operators watch: metrics, traces and access logs, and the HTTP side port.

- `http`: the side port (`--http-listen`): `/metrics`, `/livez`, `/readyz`.
- `grpc_metrics`: the call layer counting calls the conventional way
  (`grpc_server_*`).
- `server_metrics`: the server's own metrics (build, readiness, open streams).
- `store_metrics`: the `statekeeper_*` metrics and the collectors read at scrape.
- `tracing`: OpenTelemetry spans for calls and store work, when configured.
- `access_log`: one line per finished call, and the log formats.
"""
