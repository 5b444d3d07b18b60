"""The controller actor: the instrument script's control side (parameters, storage, callbacks)."""
