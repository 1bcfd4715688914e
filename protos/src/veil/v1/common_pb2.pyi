from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SealingSuite(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEALING_SUITE_UNSPECIFIED: _ClassVar[SealingSuite]
    SEALING_SUITE_X25519_SHA256_AES256GCM: _ClassVar[SealingSuite]
    SEALING_SUITE_MLKEM768X25519_SHA256_AES256GCM: _ClassVar[SealingSuite]
SEALING_SUITE_UNSPECIFIED: SealingSuite
SEALING_SUITE_X25519_SHA256_AES256GCM: SealingSuite
SEALING_SUITE_MLKEM768X25519_SHA256_AES256GCM: SealingSuite

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class SealedRequest(_message.Message):
    __slots__ = ("version", "suite", "tenant", "request_id", "timestamp_ms", "claims_digest", "sealed", "session_id", "seq")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SUITE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_MS_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SEALED_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    version: int
    suite: int
    tenant: str
    request_id: bytes
    timestamp_ms: int
    claims_digest: bytes
    sealed: bytes
    session_id: bytes
    seq: int
    def __init__(self, version: _Optional[int] = ..., suite: _Optional[int] = ..., tenant: _Optional[str] = ..., request_id: _Optional[bytes] = ..., timestamp_ms: _Optional[int] = ..., claims_digest: _Optional[bytes] = ..., sealed: _Optional[bytes] = ..., session_id: _Optional[bytes] = ..., seq: _Optional[int] = ...) -> None: ...

class SealedResponse(_message.Message):
    __slots__ = ("request_id", "nonce", "ciphertext", "seq", "final")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    request_id: bytes
    nonce: bytes
    ciphertext: bytes
    seq: int
    final: bool
    def __init__(self, request_id: _Optional[bytes] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ..., seq: _Optional[int] = ..., final: _Optional[bool] = ...) -> None: ...

class ResponseBody(_message.Message):
    __slots__ = ("payload", "receipt", "error", "replica", "session_idle_seconds")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    SESSION_IDLE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    receipt: str
    error: ErrorBody
    replica: bytes
    session_idle_seconds: int
    def __init__(self, payload: _Optional[bytes] = ..., receipt: _Optional[str] = ..., error: _Optional[_Union[ErrorBody, _Mapping]] = ..., replica: _Optional[bytes] = ..., session_idle_seconds: _Optional[int] = ...) -> None: ...

class ErrorBody(_message.Message):
    __slots__ = ("code", "reason", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    reason: str
    message: str
    def __init__(self, code: _Optional[str] = ..., reason: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class RequestBody(_message.Message):
    __slots__ = ("response_key", "api_key", "payload", "receipt_version", "session_secret")
    RESPONSE_KEY_FIELD_NUMBER: _ClassVar[int]
    API_KEY_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_SECRET_FIELD_NUMBER: _ClassVar[int]
    response_key: bytes
    api_key: str
    payload: bytes
    receipt_version: int
    session_secret: bytes
    def __init__(self, response_key: _Optional[bytes] = ..., api_key: _Optional[str] = ..., payload: _Optional[bytes] = ..., receipt_version: _Optional[int] = ..., session_secret: _Optional[bytes] = ...) -> None: ...
