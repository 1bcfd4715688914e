from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttestationRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class AttestationEvidence(_message.Message):
    __slots__ = ("tee", "report", "cert_chain", "claims", "gpus", "collateral")
    class CollateralEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    TEE_FIELD_NUMBER: _ClassVar[int]
    REPORT_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    COLLATERAL_FIELD_NUMBER: _ClassVar[int]
    tee: str
    report: bytes
    cert_chain: _containers.RepeatedScalarFieldContainer[bytes]
    claims: bytes
    gpus: _containers.RepeatedCompositeFieldContainer[GpuEvidence]
    collateral: _containers.ScalarMap[str, bytes]
    def __init__(self, tee: _Optional[str] = ..., report: _Optional[bytes] = ..., cert_chain: _Optional[_Iterable[bytes]] = ..., claims: _Optional[bytes] = ..., gpus: _Optional[_Iterable[_Union[GpuEvidence, _Mapping]]] = ..., collateral: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class GpuEvidence(_message.Message):
    __slots__ = ("spdm", "cert_chain_pem")
    SPDM_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    spdm: bytes
    cert_chain_pem: bytes
    def __init__(self, spdm: _Optional[bytes] = ..., cert_chain_pem: _Optional[bytes] = ...) -> None: ...

class EnclaveClaims(_message.Message):
    __slots__ = ("protocol_version", "key_id", "keys", "issued_at_ms", "expires_at_ms", "measurement_hex", "audit_log_key", "audit_log_origin", "manifest_sha256")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    MEASUREMENT_HEX_FIELD_NUMBER: _ClassVar[int]
    AUDIT_LOG_KEY_FIELD_NUMBER: _ClassVar[int]
    AUDIT_LOG_ORIGIN_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SHA256_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    key_id: str
    keys: _containers.RepeatedCompositeFieldContainer[SuiteKey]
    issued_at_ms: int
    expires_at_ms: int
    measurement_hex: str
    audit_log_key: bytes
    audit_log_origin: str
    manifest_sha256: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., key_id: _Optional[str] = ..., keys: _Optional[_Iterable[_Union[SuiteKey, _Mapping]]] = ..., issued_at_ms: _Optional[int] = ..., expires_at_ms: _Optional[int] = ..., measurement_hex: _Optional[str] = ..., audit_log_key: _Optional[bytes] = ..., audit_log_origin: _Optional[str] = ..., manifest_sha256: _Optional[bytes] = ...) -> None: ...

class SuiteKey(_message.Message):
    __slots__ = ("suite", "public_key")
    SUITE_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    suite: int
    public_key: bytes
    def __init__(self, suite: _Optional[int] = ..., public_key: _Optional[bytes] = ...) -> None: ...
