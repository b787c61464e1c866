"""The web console served at `/` of the HTTP side port (`--console`).

It reads and acts only through the server's own gRPC API, over a loopback
channel, so validation, access control and errors are exactly the API's.
"""
