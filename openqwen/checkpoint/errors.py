"""The one error type of checkpoint reading (no torch here: the GGUF header reader uses it too)."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that asks for something openqwen does not implement: the
    message names the file, tensor or field at fault."""
