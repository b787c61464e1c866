"""The auth layer: who is calling, in which namespace, and may they.

It sits right after the error layer (which turns its errors into
statuses) and before admission, so a refused call never counts against a
stream limit and never reaches a store. For each call it

1. authenticates: a bearer token (static tokens, then JWT), else the TLS
   client certificate, else UNAUTHENTICATED;
2. resolves the namespace: the `x-statekeeper-namespace` header, or the
   principal's only namespace when it has one and the header is absent;
3. checks the role the RPC needs there (`role_table()`, read from the
   protos), else PERMISSION_DENIED naming namespace and role (credentials
   holding only capabilities, such as `*:metrics`, may make no call);
4. records the namespace for the servicer (`request_namespace`) and, for a
   stream, ends it with TOKEN_EXPIRED (resumable) when its credential
   expires.

Health is always open; reflection is open or needs any valid credential
(`--reflection`). Denials and admin calls go to the audit log.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

from statekeeper_server import compat
from statekeeper_server.auth.audit import AuditLog
from statekeeper_server.auth.credentials import CredentialChain, Credentials, bearer_token
from statekeeper_server.auth.errors import (
    PermissionDenied,
    no_call_allowed,
    permission_denied,
    token_expired,
)
from statekeeper_server.auth.permissions import Principal
from statekeeper_server.auth.roles import Role, role_table
from statekeeper_server.errors import ServiceError, Unauthenticated
from statekeeper_server.interceptors import Context, Handler, Layer, ServerStream, Unary
from statekeeper_server.services.context import (
    NAMESPACE_HEADER,
    admit_namespace,
    admit_principal,
    namespace_from_metadata,
)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
REFLECTION_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


class Access(enum.Enum):
    """What a method needs besides a role: nothing, or any valid credential."""

    OPEN = "open"
    AUTHENTICATED = "authenticated"


Requirement = Role | Access


def requirement(method: str, reflection_open: bool) -> Requirement:
    """What a call of `method` needs: the role the table gives it, OPEN (health,
    reflection when open) or AUTHENTICATED (reflection otherwise, and any method
    outside the table)."""
    role = role_table().get(method)
    if role is not None:
        return role
    if method.startswith(HEALTH_PREFIX):
        return Access.OPEN
    if method.startswith(REFLECTION_PREFIXES) and reflection_open:
        return Access.OPEN
    return Access.AUTHENTICATED


class Gate:
    """Decides whether a call may go ahead (the checks, without the handler plumbing)."""

    def __init__(self, credentials: CredentialChain, audit: AuditLog) -> None:
        self._credentials = credentials
        self._audit = audit

    def admit(self, method: str, need: Role | Access, context: Context) -> tuple[Principal, str]:
        """The call's principal and namespace ("" when the method has none); raises
        Unauthenticated or PermissionDenied (both audited) before anything else runs."""
        metadata = context.invocation_metadata() or ()
        principal: Principal | None = None
        namespace: str | None = None
        try:
            principal = self._credentials.authenticate(
                Credentials(bearer_token(metadata), context.auth_context)
            )
            if not principal.has_roles:
                raise no_call_allowed()
            admit_principal(principal.name)
            if not isinstance(need, Role):
                return principal, ""
            namespace = namespace_from_metadata(metadata, principal.sole_namespace)
            if not principal.allows(namespace, need):
                raise permission_denied(namespace, need)
        except (Unauthenticated, PermissionDenied) as error:
            if namespace is None:
                namespace = _asked_namespace(metadata)
            self._audit.denied(
                method,
                error,
                None if principal is None else principal.name,
                namespace,
                context.peer(),
            )
            raise
        admit_namespace(namespace)
        return principal, namespace


class AuthLayer(Layer):
    """Authenticates and authorizes every call before it is admitted."""

    def __init__(self, gate: Gate, audit: AuditLog, *, reflection_open: bool) -> None:
        self._gate = gate
        self._audit = audit
        self._reflection_open = reflection_open

    def wrap(self, method: str, handler: Handler) -> Handler:
        """The handler, entered only once the call is allowed."""
        need = requirement(method, self._reflection_open)
        if need is Access.OPEN:
            return handler
        if handler.unary_unary is not None:
            if need is Role.ADMIN:
                return handler._replace(
                    unary_unary=self._audited_unary(method, need, handler.unary_unary)
                )
            return handler._replace(unary_unary=self._unary(method, need, handler.unary_unary))
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            return handler._replace(unary_stream=self._stream(method, need, handler.unary_stream))
        # Handlers the error layer passes as they are: refuse with the status itself.
        for kind in ("unary_stream", "stream_unary", "stream_stream"):
            behavior = getattr(handler, kind)
            if behavior is not None:
                return handler._replace(**{kind: self._aborting(method, need, behavior)})
        return handler

    def _unary(self, method: str, need: Requirement, behavior: Unary) -> Unary:
        gate = self._gate

        async def allowed(request: Any, context: Context) -> Any:
            gate.admit(method, need, context)
            return await behavior(request, context)

        return allowed

    def _audited_unary(self, method: str, need: Requirement, behavior: Unary) -> Unary:
        gate, audit = self._gate, self._audit

        async def allowed(request: Any, context: Context) -> Any:
            principal, namespace = gate.admit(method, need, context)
            outcome = "FAILED"
            try:
                response = await behavior(request, context)
                outcome = "OK"
                return response
            except ServiceError as error:
                outcome = error.code.name
                raise
            except asyncio.CancelledError:
                outcome = "CANCELLED"
                raise
            finally:
                audit.admin_call(method, outcome, principal.name, namespace, context.peer())

        return allowed

    def _stream(self, method: str, need: Requirement, behavior: ServerStream) -> ServerStream:
        gate = self._gate

        async def allowed(request: Any, context: Context) -> AsyncIterator[Any]:
            principal, _ = gate.admit(method, need, context)
            responses = behavior(request, context)
            if principal.expires_at is not None:
                responses = until_expiry(principal.expires_at, responses)
            async for response in responses:
                yield response

        return allowed

    def _aborting(self, method: str, need: Requirement, behavior: Any) -> Any:
        gate = self._gate

        async def refuse(context: Context) -> None:
            try:
                gate.admit(method, need, context)
            except ServiceError as error:
                await context.abort_with_status(error.to_status())

        if inspect.isasyncgenfunction(behavior):

            async def allowed_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                await refuse(context)
                async for response in behavior(request, context):
                    yield response

            return allowed_stream

        async def allowed(request: Any, context: Context) -> Any:
            await refuse(context)
            return await behavior(request, context)

        return allowed


async def until_expiry(expires_at: float, responses: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """`responses` until Unix time `expires_at`, then UNAUTHENTICATED (TOKEN_EXPIRED).

    The stream is cut even while it waits for something to send (a follower
    that has caught up); the caller resumes, with a fresh credential, after
    the last message it received.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + (expires_at - time.time())
    try:
        while True:
            if loop.time() >= deadline:
                raise token_expired("the credential this stream was opened with")
            try:
                async with compat.timeout_at(deadline):
                    response = await anext(responses)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                if loop.time() >= deadline:
                    raise token_expired("the credential this stream was opened with") from None
                raise
            yield response
    finally:
        await _close(responses)


async def _close(responses: AsyncIterator[Any]) -> None:
    close = getattr(responses, "aclose", None)
    if close is not None:
        await close()


def _asked_namespace(metadata: Any) -> str | None:
    """The namespace header of a refused call, as sent (for the audit log only)."""
    for key, value in metadata:
        if key == NAMESPACE_HEADER:
            return str(value)
    return None
