"""The project's error hierarchy: the CLI prints these as one line and exits 2."""


class OphoraError(Exception):
    """A problem the user can fix (bad input, missing files, wrong settings)."""


class InputError(OphoraError):
    """A file, column or argument given by the user is missing or malformed."""


class ModelError(OphoraError):
    """A model folder or hub id cannot be loaded."""


class MediaError(OphoraError):
    """A video or subtitle file cannot be read or written."""


class ConfigError(OphoraError):
    """A configuration file or override is invalid."""
