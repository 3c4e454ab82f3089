"""Runtime errors: each names the file, input or key at fault and says what to do."""


class RuntimeLoadError(Exception):
    """The artifact or its manifest is missing, corrupt or not for this runtime."""


class InputSpecError(ValueError):
    """An input does not match the manifest's spec (name, shape or dtype)."""


class BackendUnavailable(RuntimeLoadError):
    """The artifact's backend library is not installed on this machine."""


class BackendVersionWarning(UserWarning):
    """The backend library loaded here is not the version the build verified the artifact with."""
