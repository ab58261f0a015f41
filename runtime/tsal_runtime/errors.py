"""Errors of the runtime. Each carries a one-line message meant for the user."""


class RuntimeFailure(Exception):
    """Base class: the CLI prints ``str(err)`` on one line and exits non-zero."""


class SpecError(RuntimeFailure):
    """model.json missing, unreadable, of another schema version, or not matching model.onnx."""


class SourceError(RuntimeFailure):
    """A frame source cannot be opened or read (no camera, missing/corrupt/empty video...)."""


class EngineError(RuntimeFailure):
    """An inference engine is not available or failed to load the model."""


class DetectorError(RuntimeFailure):
    """A face detector is not installed or failed to initialise."""
