from veil.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckpointRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("checkpoint", "vkey")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    VKEY_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    vkey: str
    def __init__(self, checkpoint: _Optional[str] = ..., vkey: _Optional[str] = ...) -> None: ...

class InclusionProofRequest(_message.Message):
    __slots__ = ("leaf_index", "tree_size")
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    leaf_index: int
    tree_size: int
    def __init__(self, leaf_index: _Optional[int] = ..., tree_size: _Optional[int] = ...) -> None: ...

class InclusionProofResponse(_message.Message):
    __slots__ = ("checkpoint", "proof", "tree_size")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    tree_size: int
    def __init__(self, checkpoint: _Optional[str] = ..., proof: _Optional[_Iterable[bytes]] = ..., tree_size: _Optional[int] = ...) -> None: ...

class ConsistencyProofRequest(_message.Message):
    __slots__ = ("first_size", "second_size")
    FIRST_SIZE_FIELD_NUMBER: _ClassVar[int]
    SECOND_SIZE_FIELD_NUMBER: _ClassVar[int]
    first_size: int
    second_size: int
    def __init__(self, first_size: _Optional[int] = ..., second_size: _Optional[int] = ...) -> None: ...

class ConsistencyProofResponse(_message.Message):
    __slots__ = ("checkpoint", "proof", "second_size")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    SECOND_SIZE_FIELD_NUMBER: _ClassVar[int]
    checkpoint: str
    proof: _containers.RepeatedScalarFieldContainer[bytes]
    second_size: int
    def __init__(self, checkpoint: _Optional[str] = ..., proof: _Optional[_Iterable[bytes]] = ..., second_size: _Optional[int] = ...) -> None: ...

class ExportRequest(_message.Message):
    __slots__ = ("since_ms", "until_ms", "formats", "from_index")
    SINCE_MS_FIELD_NUMBER: _ClassVar[int]
    UNTIL_MS_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    FROM_INDEX_FIELD_NUMBER: _ClassVar[int]
    since_ms: int
    until_ms: int
    formats: _containers.RepeatedScalarFieldContainer[str]
    from_index: int
    def __init__(self, since_ms: _Optional[int] = ..., until_ms: _Optional[int] = ..., formats: _Optional[_Iterable[str]] = ..., from_index: _Optional[int] = ...) -> None: ...

class ExportResponse(_message.Message):
    __slots__ = ("files",)
    class FilesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: bytes
        def __init__(self, key: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.ScalarMap[str, bytes]
    def __init__(self, files: _Optional[_Mapping[str, bytes]] = ...) -> None: ...

class ExportChunk(_message.Message):
    __slots__ = ("name", "offset", "data")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    name: str
    offset: int
    data: bytes
    def __init__(self, name: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class ExportFile(_message.Message):
    __slots__ = ("name", "size", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size: int
    sha256: bytes
    def __init__(self, name: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[bytes] = ...) -> None: ...

class ExportSummary(_message.Message):
    __slots__ = ("files", "tree_size", "entries")
    FILES_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[ExportFile]
    tree_size: int
    entries: int
    def __init__(self, files: _Optional[_Iterable[_Union[ExportFile, _Mapping]]] = ..., tree_size: _Optional[int] = ..., entries: _Optional[int] = ...) -> None: ...

class ExportStreamMessage(_message.Message):
    __slots__ = ("chunk", "summary")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    chunk: ExportChunk
    summary: ExportSummary
    def __init__(self, chunk: _Optional[_Union[ExportChunk, _Mapping]] = ..., summary: _Optional[_Union[ExportSummary, _Mapping]] = ...) -> None: ...
