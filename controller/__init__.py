"""The controller actor: the instrument script's control side (parameters, storage, callbacks).

The script API lives in :mod:`controller.script`; ``python -m controller.docs``
prints the table of where each script function is available.
"""
