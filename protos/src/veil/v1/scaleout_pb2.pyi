from veil.v1 import attestation_pb2 as _attestation_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChallengeRequest(_message.Message):
    __slots__ = ("nonce",)
    NONCE_FIELD_NUMBER: _ClassVar[int]
    nonce: bytes
    def __init__(self, nonce: _Optional[bytes] = ...) -> None: ...

class ChallengeResponse(_message.Message):
    __slots__ = ("coordinator", "challenge", "manifest", "manifest_signature")
    COORDINATOR_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    coordinator: _attestation_pb2.AttestationEvidence
    challenge: bytes
    manifest: bytes
    manifest_signature: bytes
    def __init__(self, coordinator: _Optional[_Union[_attestation_pb2.AttestationEvidence, _Mapping]] = ..., challenge: _Optional[bytes] = ..., manifest: _Optional[bytes] = ..., manifest_signature: _Optional[bytes] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("challenge", "evidence")
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    challenge: bytes
    evidence: _attestation_pb2.AttestationEvidence
    def __init__(self, challenge: _Optional[bytes] = ..., evidence: _Optional[_Union[_attestation_pb2.AttestationEvidence, _Mapping]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("sealed_bundle",)
    SEALED_BUNDLE_FIELD_NUMBER: _ClassVar[int]
    sealed_bundle: bytes
    def __init__(self, sealed_bundle: _Optional[bytes] = ...) -> None: ...

class KeyBundle(_message.Message):
    __slots__ = ("epochs", "model_key", "certificate", "refresh_at_ms")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    MODEL_KEY_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    REFRESH_AT_MS_FIELD_NUMBER: _ClassVar[int]
    epochs: _containers.RepeatedCompositeFieldContainer[SharedEpoch]
    model_key: bytes
    certificate: bytes
    refresh_at_ms: int
    def __init__(self, epochs: _Optional[_Iterable[_Union[SharedEpoch, _Mapping]]] = ..., model_key: _Optional[bytes] = ..., certificate: _Optional[bytes] = ..., refresh_at_ms: _Optional[int] = ...) -> None: ...

class SharedEpoch(_message.Message):
    __slots__ = ("claims", "x25519_private", "mlkem_seed", "hybrid_x25519_private")
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    X25519_PRIVATE_FIELD_NUMBER: _ClassVar[int]
    MLKEM_SEED_FIELD_NUMBER: _ClassVar[int]
    HYBRID_X25519_PRIVATE_FIELD_NUMBER: _ClassVar[int]
    claims: bytes
    x25519_private: bytes
    mlkem_seed: bytes
    hybrid_x25519_private: bytes
    def __init__(self, claims: _Optional[bytes] = ..., x25519_private: _Optional[bytes] = ..., mlkem_seed: _Optional[bytes] = ..., hybrid_x25519_private: _Optional[bytes] = ...) -> None: ...

class ReplicaCertificate(_message.Message):
    __slots__ = ("statement", "signature", "evidence")
    STATEMENT_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    statement: bytes
    signature: bytes
    evidence: _attestation_pb2.AttestationEvidence
    def __init__(self, statement: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., evidence: _Optional[_Union[_attestation_pb2.AttestationEvidence, _Mapping]] = ...) -> None: ...
