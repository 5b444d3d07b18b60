"""Every message class gets a working generated decoder (they are built lazily, so check them all here)."""

from __future__ import annotations

import dataclasses

from actors.messages import _NESTED, _REGISTRY, _decoder, decode, encode


def test_every_class_has_a_decoder_and_round_trips_its_defaults() -> None:
    for cls in list(_NESTED) + list(_REGISTRY.values()):
        assert callable(_decoder(cls)), cls
    for cls in _REGISTRY.values():
        required = [f for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if not required:
            assert decode(encode(cls(), 9)) == (9, cls())
