"""What the decoder checks in every message: field types named by path, 64-bit ints, handles, nesting, kinds."""

from __future__ import annotations

from typing import Annotated, Any, get_args, get_origin

import msgpack
import msgspec
import pytest

from actors._errors import ProtocolError
from actors.messages import (
    ArrayHandle, GetJobs, Heartbeat, JobInfo, JobInfos, Kind, Message, Scale, Submitted, VERSION, _REGISTRY, _decoder, decode, encode,
    register,
)
from audio.messages import AudioKind, SampleInfo, SampleLoad
from controller.messages import ScriptKind

I64_MIN, I64_MAX = -(2**63), 2**63 - 1


def frame(kind: int, *fields: object, corr: int = 1) -> bytes:
    return msgpack.packb([VERSION, int(kind), corr, [int(kind), *fields]])


def _structs() -> set[type[msgspec.Struct]]:
    """Every message class and every class nested in one."""
    seen: set[type[msgspec.Struct]] = set()
    todo: list[Any] = list(_REGISTRY.values())
    while todo:
        hint = todo.pop()
        if isinstance(hint, type) and issubclass(hint, msgspec.Struct):
            if hint not in seen:
                seen.add(hint)
                todo += [f.type for f in msgspec.structs.fields(hint)]
        else:
            todo += get_args(hint) if get_origin(hint) is not Annotated else []
    return seen


def test_every_kind_has_one_class_tagged_with_it() -> None:
    assert sorted(_REGISTRY) == sorted(int(k) for kinds in (Kind, AudioKind, ScriptKind) for k in kinds)
    for kind, cls in _REGISTRY.items():
        assert cls.KIND == kind and cls.__struct_config__.tag == kind and issubclass(cls, Message)


def test_every_class_round_trips_its_defaults() -> None:
    for cls in _REGISTRY.values():
        if not any(f.required for f in msgspec.structs.fields(cls)):
            assert decode(encode(cls(), 9)) == (9, cls())


def test_every_int_field_is_a_signed_64_bit_int() -> None:
    def bare_ints(hint: Any) -> bool:
        if hint is int:
            return True
        if get_origin(hint) is Annotated:
            base, *meta = get_args(hint)
            if base is int:
                return not any(m.ge == I64_MIN and m.le == I64_MAX for m in meta if isinstance(m, msgspec.Meta))
            return bare_ints(base)
        return any(bare_ints(a) for a in get_args(hint))

    offenders = [f"{cls.__name__}.{f.name}" for cls in _structs() for f in msgspec.structs.fields(cls) if bare_ints(f.type)]
    assert not offenders, offenders


@pytest.mark.parametrize("raw, where", [
    (frame(Kind.SCALE, "three"), "Scale.workers"),
    (frame(Kind.SUBMIT, [["tests.jobs:pid", [], {}, "n", 1, "slow"]]), r"Submit.jobs\[0\].timeout_ms"),
    (frame(Kind.SUBMIT, [["tests.jobs:pid", [], {3: None}]]), r"Submit.jobs\[0\].kwargs \(a map key\)"),
    (frame(Kind.JOB_INFOS, [[1, "m:f", "n", "done"], [2, "m:f", 7, "done"]]), r"JobInfos.jobs\[1\].name"),
    (frame(Kind.GET_JOBS, [1, 2, "3"]), r"GetJobs.job_ids\[2\]"),
    (frame(AudioKind.SAMPLE_LOAD, ["s", "not a handle", 48000]), "SampleLoad.sample.handle"),
    (frame(Kind.HEARTBEAT, {"ok": 1, 2: "two"}), r"Heartbeat.stats \(a map key\)"),
    (frame(Kind.STATUS_REPLY, ["d", 1, "v", 0.0, "r", "s", "l", 1, 0, 0, 1, {}], [["a", "worker", 1, "running", 0.0, 0, 0.0, 1.5]]),
     r"StatusReply.actors\[0\].rss"),
])
def test_validation_errors_name_the_field(raw: bytes, where: str) -> None:
    with pytest.raises(ProtocolError, match=f"^{where}: Expected"):
        decode(raw)


@pytest.mark.parametrize("value, ok", [(I64_MAX, True), (I64_MIN, True), (I64_MAX + 1, False), (2**64 - 1, False)])
def test_int_fields_take_exactly_the_signed_64_bit_range(value: int, ok: bool) -> None:
    for raw, msg in ((frame(Kind.SCALE, value), Scale(value)), (frame(Kind.SUBMITTED, [1, value]), Submitted([1, value])),
                     (frame(Kind.JOB_INFOS, [[value, "m:f", "n", "done"]]), JobInfos([JobInfo(value, "m:f", "n", "done")]))):
        if ok:
            assert decode(raw) == (1, msg)
        else:
            with pytest.raises(ProtocolError, match=r": out of range \(a signed 64-bit int\)$"):
                decode(raw)


def test_values_typed_any_keep_their_unsigned_64_bit_ints() -> None:
    assert decode(encode(Heartbeat({"big": 2**64 - 1})))[1] == Heartbeat({"big": 2**64 - 1})


def _handle_frame(name: str) -> bytes:
    return encode(SampleLoad(SampleInfo("s", ArrayHandle(name, "<f4", (8,), 0), 48000)))


def test_handles_must_carry_the_policy_prefix() -> None:
    assert decode(_handle_frame("ensemble.d1.5.0"), handles="ensemble.d1.")[1].sample.handle.name == "ensemble.d1.5.0"  # type: ignore[attr-defined]
    with pytest.raises(ProtocolError, match="does not name a segment of this daemon"):
        decode(_handle_frame("ensemble.other.5.0"), handles="ensemble.d1.")
    with pytest.raises(ProtocolError, match="does not name a segment of this daemon"):
        decode(_handle_frame("ensemble.d1./../x"), handles="ensemble.d1.")
    with pytest.raises(ProtocolError, match=r"array handles .* are refused from a remote peer"):
        decode(_handle_frame("ensemble.d1.5.0"), handles=None)
    inline = encode(Heartbeat({"a": __import__("numpy").zeros(3)}))
    assert decode(inline, handles=None)[1].stats["a"].shape == (3,)  # type: ignore[attr-defined]


def test_the_decoder_of_each_policy_is_built_once() -> None:
    from actors import messages

    gen = messages._generation
    assert _decoder("ensemble.d1.", gen) is _decoder("ensemble.d1.", gen)
    assert _decoder(None, gen) is _decoder(None, gen) and _decoder(None, gen) is not _decoder("ensemble.d1.", gen)


def test_a_kind_belongs_to_one_class() -> None:
    class Twin(Message, tag=int(Kind.PING), frozen=True):
        pass

    with pytest.raises(ValueError, match="message kind 20 of .*Twin is taken by Ping"):
        register(Kind, Twin)
    assert _REGISTRY[int(Kind.PING)] is not Twin


def test_a_process_decodes_only_the_schemas_it_imported() -> None:
    """The runtime alone (no audio package imported) refuses a note as an unknown kind, saying which."""
    import subprocess
    import sys

    from audio.messages import NoteOnEvent

    code = ("import sys; from actors.messages import decode; from actors import ProtocolError\n"
            "try:\n    decode(sys.stdin.buffer.read())\nexcept ProtocolError as e:\n    print(e)\n"
            "print('audio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], input=encode(NoteOnEvent(60), 3), capture_output=True,
                         check=True).stdout.decode()
    assert out.split("\n")[:2] == ["unknown message kind 65", "False"]
    assert decode(encode(NoteOnEvent(60), 3)) == (3, NoteOnEvent(60))  # here, where audio.messages is imported


def test_nesting_deeper_than_the_recursion_limit_is_refused() -> None:
    value: object = None
    for _ in range(5000):
        value = [value]
    raw = encode(Heartbeat({"deep": 0}), 6)[:-1] + b"\x91" * 5000 + b"\xc0"  # msgpack itself would not nest so deep
    with pytest.raises(ProtocolError, match="nests too deeply"):
        decode(raw)
    with pytest.raises(ProtocolError, match="cannot encode Heartbeat"):
        encode(Heartbeat({"deep": value}))


@pytest.mark.parametrize("kind", [0, 19, 99, 2**40, -1])
def test_unknown_kinds_are_refused_by_number(kind: int) -> None:
    with pytest.raises(ProtocolError, match=f"unknown message kind {kind}"):
        decode(msgpack.packb([VERSION, kind, 1, [kind]]))


def test_a_message_of_another_kind_than_its_envelope_is_refused() -> None:
    raw = msgpack.packb([VERSION, int(Kind.PING), 1, [int(Kind.SHUTDOWN)]])
    with pytest.raises(ProtocolError, match="the envelope says kind 20"):
        decode(raw)
    assert decode(encode(GetJobs([1]), 1)) == (1, GetJobs([1]))
