from veil.v1 import common_pb2 as _common_pb2
from veil.v1 import models_pb2 as _models_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DatasetHeader(_message.Message):
    __slots__ = ("format", "data_key", "size", "sha256", "label_column")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LABEL_COLUMN_FIELD_NUMBER: _ClassVar[int]
    format: str
    data_key: bytes
    size: int
    sha256: bytes
    label_column: str
    def __init__(self, format: _Optional[str] = ..., data_key: _Optional[bytes] = ..., size: _Optional[int] = ..., sha256: _Optional[bytes] = ..., label_column: _Optional[str] = ...) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("sha256", "format", "rows", "feature_shape", "num_classes", "size")
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    FEATURE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    sha256: str
    format: str
    rows: int
    feature_shape: _containers.RepeatedScalarFieldContainer[int]
    num_classes: int
    size: int
    def __init__(self, sha256: _Optional[str] = ..., format: _Optional[str] = ..., rows: _Optional[int] = ..., feature_shape: _Optional[_Iterable[int]] = ..., num_classes: _Optional[int] = ..., size: _Optional[int] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("dataset_sha256", "model_kind", "hidden", "channels", "activation", "norm", "target_epsilon", "delta", "max_grad_norm", "epochs", "batch_size", "learning_rate", "optimizer", "accountant", "noise", "seed", "model_name", "input_shape", "watermark")
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_KIND_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    NORM_FIELD_NUMBER: _ClassVar[int]
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    dataset_sha256: str
    model_kind: str
    hidden: _containers.RepeatedScalarFieldContainer[int]
    channels: _containers.RepeatedScalarFieldContainer[int]
    activation: str
    norm: str
    target_epsilon: float
    delta: float
    max_grad_norm: float
    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str
    accountant: str
    noise: str
    seed: int
    model_name: str
    input_shape: _containers.RepeatedScalarFieldContainer[int]
    watermark: TrainingWatermark
    def __init__(self, dataset_sha256: _Optional[str] = ..., model_kind: _Optional[str] = ..., hidden: _Optional[_Iterable[int]] = ..., channels: _Optional[_Iterable[int]] = ..., activation: _Optional[str] = ..., norm: _Optional[str] = ..., target_epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., optimizer: _Optional[str] = ..., accountant: _Optional[str] = ..., noise: _Optional[str] = ..., seed: _Optional[int] = ..., model_name: _Optional[str] = ..., input_shape: _Optional[_Iterable[int]] = ..., watermark: _Optional[_Union[TrainingWatermark, _Mapping]] = ...) -> None: ...

class TrainingWatermark(_message.Message):
    __slots__ = ("owner_private_key", "watermark_key_json", "strength", "n_bits")
    OWNER_PRIVATE_KEY_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_KEY_JSON_FIELD_NUMBER: _ClassVar[int]
    STRENGTH_FIELD_NUMBER: _ClassVar[int]
    N_BITS_FIELD_NUMBER: _ClassVar[int]
    owner_private_key: bytes
    watermark_key_json: str
    strength: float
    n_bits: int
    def __init__(self, owner_private_key: _Optional[bytes] = ..., watermark_key_json: _Optional[str] = ..., strength: _Optional[float] = ..., n_bits: _Optional[int] = ...) -> None: ...

class TrainProgress(_message.Message):
    __slots__ = ("epoch", "step", "total_steps", "loss", "epsilon")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    step: int
    total_steps: int
    loss: float
    epsilon: float
    def __init__(self, epoch: _Optional[int] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., loss: _Optional[float] = ..., epsilon: _Optional[float] = ...) -> None: ...

class TrainResult(_message.Message):
    __slots__ = ("model", "record_json", "certificate", "watermark")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    WATERMARK_FIELD_NUMBER: _ClassVar[int]
    model: _models_pb2.ModelInfo
    record_json: str
    certificate: str
    watermark: TrainedWatermark
    def __init__(self, model: _Optional[_Union[_models_pb2.ModelInfo, _Mapping]] = ..., record_json: _Optional[str] = ..., certificate: _Optional[str] = ..., watermark: _Optional[_Union[TrainedWatermark, _Mapping]] = ...) -> None: ...

class TrainedWatermark(_message.Message):
    __slots__ = ("claim_json", "p_value", "matches", "n_bits")
    CLAIM_JSON_FIELD_NUMBER: _ClassVar[int]
    P_VALUE_FIELD_NUMBER: _ClassVar[int]
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    N_BITS_FIELD_NUMBER: _ClassVar[int]
    claim_json: str
    p_value: float
    matches: int
    n_bits: int
    def __init__(self, claim_json: _Optional[str] = ..., p_value: _Optional[float] = ..., matches: _Optional[int] = ..., n_bits: _Optional[int] = ...) -> None: ...

class TrainEvent(_message.Message):
    __slots__ = ("progress", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: TrainProgress
    result: TrainResult
    def __init__(self, progress: _Optional[_Union[TrainProgress, _Mapping]] = ..., result: _Optional[_Union[TrainResult, _Mapping]] = ...) -> None: ...

class BudgetRequest(_message.Message):
    __slots__ = ("dataset_sha256",)
    DATASET_SHA256_FIELD_NUMBER: _ClassVar[int]
    dataset_sha256: str
    def __init__(self, dataset_sha256: _Optional[str] = ...) -> None: ...

class BudgetResponse(_message.Message):
    __slots__ = ("epsilon_budget", "epsilon_spent", "epsilon_remaining", "delta_budget", "delta_spent")
    EPSILON_BUDGET_FIELD_NUMBER: _ClassVar[int]
    EPSILON_SPENT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    DELTA_BUDGET_FIELD_NUMBER: _ClassVar[int]
    DELTA_SPENT_FIELD_NUMBER: _ClassVar[int]
    epsilon_budget: float
    epsilon_spent: float
    epsilon_remaining: float
    delta_budget: float
    delta_spent: float
    def __init__(self, epsilon_budget: _Optional[float] = ..., epsilon_spent: _Optional[float] = ..., epsilon_remaining: _Optional[float] = ..., delta_budget: _Optional[float] = ..., delta_spent: _Optional[float] = ...) -> None: ...
