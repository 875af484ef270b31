"""Kafka requests and responses: frames in, typed requests out; typed responses in, frames out (sans-I/O).

`decode_request(frame)` reads a request frame (from `FrameReader`, without its size prefix) into a
`Request`: its header and its body, one of the `*Request` classes of messages.py, at the version the
client sent. An API key or version not served raises `UnsupportedRequest` (Kafka closes the connection;
clients never send one, since they choose from our ApiVersions answer), except for ApiVersions itself: an
ApiVersions request of any version is decoded (its body left empty when the version is not served).
`encode_response(request, body)` writes the answer, with its size prefix, at the request's version; an
ApiVersions error (a version not served) is written in v0 with UNSUPPORTED_VERSION and the full list,
which is what clients expect (they retry with the highest version listed). The client-side pair
(`encode_request`, `decode_response`) exists for tests and tools.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shmraft.kafka import messages as m
from shmraft.kafka.codes import ApiKey, ErrorCode
from shmraft.kafka.errors import UnsupportedRequest
from shmraft.kafka.framing import (
    RequestHeader,
    decode_request_header,
    decode_response_header,
    encode_request_header,
    encode_response_header,
    frame,
    peek_request_header,
)
from shmraft.kafka.primitives import Reader, Writer
from shmraft.kafka.schema import decode_struct, encode_struct
from shmraft.kafka.versions import API_VERSIONS_ERROR_VERSION, APIS, Api, supported_ranges


@dataclass(slots=True)
class Request:
    """A decoded request: its header and its body (an instance of the API's `*Request` class)."""

    header: RequestHeader
    body: Any

    @property
    def api_key(self) -> int:
        return self.header.api_key

    @property
    def version(self) -> int:
        return self.header.api_version

    @property
    def supported(self) -> bool:
        """False only for an ApiVersions request of a version not served (answered with the v0 error)."""
        return APIS[self.header.api_key].supports(self.header.api_version)


def _api(api_key: int, api_version: int, correlation_id: int) -> Api:
    api = APIS.get(api_key)
    if api is None or (not api.supports(api_version) and api_key != ApiKey.API_VERSIONS) or api_version < 0:
        raise UnsupportedRequest(api_key, api_version, correlation_id)
    return api


def decode_request(data: bytes | memoryview) -> Request:
    """A request frame (no size prefix) as a typed Request; every violation is a KafkaRemoteError."""
    api_key, api_version, correlation_id = peek_request_header(data)
    api = _api(api_key, api_version, correlation_id)
    r = Reader(data)
    if not api.supports(api_version):  # ApiVersions of a later version: only its header is certain
        header = decode_request_header(r, api.request_header_version(api.max_version))
        return Request(header, m.ApiVersionsRequest())
    header = decode_request_header(r, api.request_header_version(api_version))
    body = decode_struct(api.request, r, api_version, api.flexible(api_version))
    r.expect_end(f"{api.request.__name__}")
    return Request(header, body)


def encode_response(request: Request | RequestHeader, body: Any) -> bytes:
    """The answer to `request`, size prefix included, at the request's version (see the module docstring)."""
    header = request.header if isinstance(request, Request) else request
    api = APIS[header.api_key]
    if not isinstance(body, api.response):
        raise TypeError(f"{type(body).__name__} is not the answer to {api.key.name}")
    version = header.api_version
    if not api.supports(version) or (api.key == ApiKey.API_VERSIONS and body.error_code != ErrorCode.NONE):
        version = API_VERSIONS_ERROR_VERSION  # an ApiVersions error is answered in v0, whatever was asked
    w = Writer()
    encode_response_header(w, header.correlation_id, api.response_header_version(version))
    encode_struct(body, w, version, api.flexible(version))
    return frame(w.getvalue())


def api_versions_response(request: Request) -> m.ApiVersionsResponse:
    """The ApiVersions answer: every API served; UNSUPPORTED_VERSION when the request's version is not."""
    error = ErrorCode.NONE if request.supported else ErrorCode.UNSUPPORTED_VERSION
    return m.ApiVersionsResponse(error_code=error, api_keys=supported_ranges())


# --- the client side (tests, tools) -------------------------------------------------------------------------------


def encode_request(header: RequestHeader, body: Any) -> bytes:
    """A request frame with its size prefix, as a client sends it."""
    api = APIS[header.api_key]
    w = Writer()
    encode_request_header(w, header, api.request_header_version(header.api_version))
    encode_struct(body, w, header.api_version, api.flexible(header.api_version))
    return frame(w.getvalue())


def decode_response(api_key: int, api_version: int, data: bytes | memoryview) -> tuple[int, Any]:
    """(correlation_id, body) of a response frame without its size prefix, as a client reads it. An
    ApiVersions answer with an error is read as v0, as Kafka's clients do."""
    api = APIS[api_key]
    r = Reader(data)
    correlation_id = decode_response_header(r, api.response_header_version(api_version))
    if api_key == ApiKey.API_VERSIONS and r.remaining >= 2 and bytes(data[r.pos : r.pos + 2]) != b"\x00\x00":
        api_version = API_VERSIONS_ERROR_VERSION
    body = decode_struct(api.response, r, api_version, api.flexible(api_version))
    r.expect_end(api.response.__name__)
    return correlation_id, body
