from veil.v1 import common_pb2 as _common_pb2
from veil.v1 import models_pb2 as _models_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbedWatermarkRequest(_message.Message):
    __slots__ = ("model", "owner_private_key", "watermark_key_json", "dataset_sha256", "epochs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OWNER_PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_KEY_JSON_FIELD_NUMBER: _ClassVar[int]
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    model: str
    owner_private_key: bytes
    watermark_key_json: str
    dataset_sha256: str
    epochs: int
    def __init__(self, model: _Optional[str] = ..., owner_private_key: _Optional[bytes] = ..., watermark_key_json: _Optional[str] = ..., dataset_sha256: _Optional[str] = ..., epochs: _Optional[int] = ...) -> None: ...

class EmbedWatermarkResponse(_message.Message):
    __slots__ = ("model", "claim_json", "p_value", "matches", "n_bits", "accuracy_before", "accuracy_after")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLAIM_JSON_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    N_BITS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_AFTER_FIELD_NUMBER: _ClassVar[int]
    model: _models_pb2.ModelInfo
    claim_json: str
    p_value: float
    matches: int
    n_bits: int
    accuracy_before: float
    accuracy_after: float
    def __init__(self, model: _Optional[_Union[_models_pb2.ModelInfo, _Mapping]] = ..., claim_json: _Optional[str] = ..., p_value: _Optional[float] = ..., matches: _Optional[int] = ..., n_bits: _Optional[int] = ..., accuracy_before: _Optional[float] = ..., accuracy_after: _Optional[float] = ...) -> None: ...

class VerifyWatermarkRequest(_message.Message):
    __slots__ = ("model", "claim_json", "opening_json", "threshold")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CLAIM_JSON_FIELD_NUMBER: _ClassVar[int]
    OPENING_JSON_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    model: str
    claim_json: str
    opening_json: str
    threshold: float
    def __init__(self, model: _Optional[str] = ..., claim_json: _Optional[str] = ..., opening_json: _Optional[str] = ..., threshold: _Optional[float] = ...) -> None: ...

class VerifyWatermarkResponse(_message.Message):
    __slots__ = ("detected", "p_value", "matches", "n_bits", "threshold", "model_sha256", "claim_sha256")
    DETECTED_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    N_BITS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    CLAIM_SHA256_FIELD_NUMBER: _ClassVar[int]
    detected: bool
    p_value: float
    matches: int
    n_bits: int
    threshold: float
    model_sha256: str
    claim_sha256: str
    def __init__(self, detected: _Optional[bool] = ..., p_value: _Optional[float] = ..., matches: _Optional[int] = ..., n_bits: _Optional[int] = ..., threshold: _Optional[float] = ..., model_sha256: _Optional[str] = ..., claim_sha256: _Optional[str] = ...) -> None: ...
