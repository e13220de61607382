"""Exception types. Every error names the file or value at fault and what to do about it."""


class DragontuneError(Exception):
    """Base class: a user-facing error with an actionable message."""


class ConfigError(DragontuneError, ValueError):
    pass


class AudioError(DragontuneError, ValueError):
    pass


class DataError(DragontuneError, ValueError):
    pass


class CheckpointError(DragontuneError, ValueError):
    pass


class EncoderError(DragontuneError, ValueError):
    pass


class RewardError(DragontuneError, ValueError):
    pass
