"""Relays declared at start (`--relay`), beside those created through RelayService.

A definition is `NAME=SINK`, optionally followed by options as in a URL
query: `audit=events?namespace=acme&run_id_prefix=agent-&event_kinds=custom,run_started`
(namespace `default` unless given). At start each one is created if it is
missing; one of that name with another definition stops the start, as does
a definition that is wrong, with a message naming the relay.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qs

from statekeeper_server.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from statekeeper_server.publish.sinks import Sinks
from statekeeper_server.services.relays import relay_spec
from statekeeper_server.stores.relays import RelaySpec, RelayStore
from statekeeper_server.validation import require_id

OPTIONS = ("namespace", "run_id_prefix", "event_kinds")
DEFAULT_NAMESPACE = "default"


class RelayConfigError(ValueError):
    """A relay definition that cannot be used; the message names the relay."""


def parse_relay(definition: str, sinks: Sinks) -> tuple[str, RelaySpec]:
    """`NAME=SINK[?options]` as (namespace, definition); RelayConfigError if it is wrong."""
    head, _, query = definition.strip().partition("?")
    name, sep, sink = head.partition("=")
    if not sep:
        raise RelayConfigError(
            f"relay {definition!r} must be NAME=SINK[?namespace=..&run_id_prefix=..&event_kinds=..]"
        )
    options = {key: values[-1] for key, values in parse_qs(query).items()}
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise RelayConfigError(
            f"relay {name}: unknown option {unknown[0]!r}; options are " + ", ".join(OPTIONS)
        )
    kinds = [kind for kind in options.get("event_kinds", "").split(",") if kind]
    try:
        namespace = require_id(options.get("namespace", DEFAULT_NAMESPACE), "namespace")
        spec = relay_spec(name, sink, options.get("run_id_prefix", ""), kinds, sinks, "")
    except InvalidArgument as exc:
        raise RelayConfigError(f"relay {name}: {exc.message}") from None
    return namespace, spec


async def declare_relays(relays: RelayStore, definitions: Iterable[str], sinks: Sinks) -> None:
    """Create the relays of `definitions` that do not exist yet; RelayConfigError for a
    wrong definition or a relay of the same name defined otherwise."""
    for namespace, spec in [parse_relay(definition, sinks) for definition in definitions]:
        try:
            await relays.create(namespace, spec)
        except (AlreadyExists, FailedPrecondition) as exc:
            raise RelayConfigError(f"relay {spec.name} of {namespace}: {exc.message}") from None
