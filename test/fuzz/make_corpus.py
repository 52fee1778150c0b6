#!/usr/bin/env python3
"""Writes the committed seed corpora of test/fuzz (corpus/<target>/<name>).

Run from anywhere: python3 test/fuzz/make_corpus.py. It rewrites only the files
it names, so seeds added by hand (or minimized crash inputs) stay. The encodings
are described in fuzz_support.hpp (fields) and fuzz_complete.cpp (operations).
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    directory = os.path.join(HERE, "corpus", target)
    os.makedirs(directory, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("latin-1")
    with open(os.path.join(directory, name), "wb") as out:
        out.write(data)


# --- fuzz_serial: the text of a serial ------------------------------------------------

SECRET = "Q2hhbmdlTWUxMjM0NTY3OA"  # 22 base64url characters
BASE62_SECRET = "3R8RjEscrCCJnyXWIy7JOh"  # as newSecret writes it now
OLD_SECRET = "8PHy8_T19vf4-fr7_P3-_w"  # base64url, as stored before base62
serials = {
    "bare": "5_31",
    "with_secret": "5_31_" + SECRET,
    "base62_secret": "5_31_" + BASE62_SECRET,
    "old_secret_with_underscore_and_dash": "5_31_" + OLD_SECRET,
    "old_secret_starting_with_underscore": "5_31__" + OLD_SECRET[:-1],
    # Ids and secret bytes for the format direction: 2^128 - 1, the largest secret.
    "format_largest_secret": "\xff" * 32,
    "max_ids": "9223372036854775807_9223372036854775807_" + SECRET,
    "overflow": "9223372036854775808_1",
    "leading_zero": "05_31",
    "zero_run": "5_0",
    "negative": "-5_31",
    "short_secret": "5_31_" + SECRET[:-1],
    "long_secret": "5_31_" + SECRET + "A",
    "bad_secret_char": "5_31_" + SECRET[:10] + "+" + SECRET[11:],
    "trailing_underscore": "5_31_",
    "no_run": "5_",
    "empty": "",
    "binary": "5\x00_31\xff",
    "spaces": " 5_31 ",
}
for name, text in serials.items():
    write("fuzz_serial", name, text)


# --- fuzz_fields: a list of fields ----------------------------------------------------

# Declared names in fuzz_fields.cpp, by index: 0 Text (String), 1 Count (Int64),
# 2 Ratio (Double), 3 Flag (Bool), 4 "nul\0name" (String), 5 "\xff\xfe\x80"
# (Int64), 6 "été" (Double), 7 300 x 'L' (String).
def declared(index):
    return bytes([index])


def raw_name(name):
    name = name.encode("latin-1") if isinstance(name, str) else name
    return bytes([0x80 | len(name)]) + name


def null():
    return bytes([0])


def boolean(b):
    return bytes([1, 1 if b else 0])


def int64(i):
    return bytes([2]) + struct.pack("<q", i)


def double(d):
    return bytes([3]) + struct.pack("<d", d)


def string(s):
    s = s.encode("latin-1") if isinstance(s, str) else s
    return bytes([4, len(s)]) + s


def long_string(pattern, count):
    return bytes([5, len(pattern)]) + pattern.encode("latin-1") + struct.pack("<H", count)


def small_int(i):
    return bytes([6, i & 0xFF])


def special(index):  # NaN, -NaN, Inf, -Inf, -0.0, denorm_min, max, signalling NaN
    return bytes([7, index])


fields = {
    "valid_all_types": declared(0) + string("A-17") + declared(1) + int64(-42) + declared(2)
    + double(2.5) + declared(3) + boolean(True),
    "int_for_double": declared(2) + small_int(-3) + declared(6) + int64(2**53 + 1),
    "nulls": declared(0) + null() + declared(1) + null() + declared(3) + null(),
    "negative_zero": declared(2) + special(4) + declared(6) + special(4),
    "infinities": declared(2) + special(2) + declared(6) + special(3),
    "nan": declared(2) + special(0),
    "signalling_nan": declared(6) + special(7),
    "wrong_type": declared(1) + string("seven"),
    "double_for_int": declared(1) + double(7.0),
    "undeclared": raw_name("Undeclared") + string("x"),
    "empty_name": raw_name("") + boolean(False),
    "nul_names": declared(4) + string("a\x00b") + raw_name("nul\x00nam") + null(),
    "invalid_utf8": declared(5) + int64(2**63 - 1) + declared(0) + string("\xff\xc0\x80\xed\xa0\x80"),
    "long_string": declared(7) + long_string("abc\x00", 16000),
    "long_name_wrong": declared(7) + boolean(True),
    "repeated_name": declared(0) + string("first") + declared(0) + int64(1),
    # Every declared name once with its own type, then eight undeclared or mistyped.
    "sixteen_fields": declared(0) + string("text") + declared(1) + int64(1) + declared(2)
    + double(-1.5) + declared(3) + boolean(False) + declared(4) + string("\x00") + declared(5)
    + small_int(-1) + declared(6) + special(5) + declared(7) + long_string("xy", 300)
    + raw_name("a") + null() + raw_name("\xff") + null() + raw_name("Text\x00") + string("t")
    + declared(1) + special(6) + declared(3) + int64(1) + declared(0) + boolean(True)
    + raw_name("\x00") + null() + declared(2) + string("2.5"),
}
for name, data in fields.items():
    write("fuzz_fields", name, data)


# --- fuzz_complete: a list of operations ----------------------------------------------

# Operation byte: kind = byte % 8 (0-2 complete, 3 fail, 4 heartbeat, 5 timers,
# 6 start, 7 cancel); bit 3: the bare engine; bits 4-5: the serial's source
# (0 raw text, 1 a known run, 2 a known run mutated, 3 synthesized).
def op(kind, source=0, bare=False):
    return bytes([kind | (8 if bare else 0) | (source << 4)])


def text(s):
    s = s.encode("latin-1") if isinstance(s, str) else s
    return bytes([len(s)]) + s


def known(instance_index, run_index):  # instances in id order, runs in run order
    return bytes([instance_index, run_index])


def fields_of(encoded):
    return text(encoded)


NO_FIELDS = text(b"")
STATUS_APPROVED = fields_of(bytes([1]) + string("Approved"))  # name index 1: Status
BAD_FIELD = fields_of(bytes([6]) + string("x"))  # name index 6: Bogus
NAN_AMOUNT = fields_of(bytes([2]) + special(0))  # name index 2: Amount

complete = {
    # Complete each waiting instance with its own serial (instances 2-7 wait).
    "complete_waiting": b"".join(op(0, 1) + known(i, 0) + STATUS_APPROVED for i in range(1, 7)),
    "complete_twice": op(0, 1) + known(2, 0) + NO_FIELDS + op(0, 1) + known(2, 0) + NO_FIELDS,
    "complete_second_step": op(0, 1) + known(7, 1) + NO_FIELDS,
    "complete_bad_fields": op(0, 1) + known(3, 0) + BAD_FIELD + op(1, 1) + known(3, 0) + NAN_AMOUNT,
    "wrong_secret": b"".join(op(0, 2) + known(4, 0) + bytes([how, 5]) + NO_FIELDS for how in range(10)),
    "raw_serials": op(0, 0) + text("2_1") + NO_FIELDS + op(0, 0) + text("2_1_AAAAAAAAAAAAAAAAAAAAAA")
    + NO_FIELDS + op(0, 0) + text("999_1_AAAAAAAAAAAAAAAAAAAAAA") + NO_FIELDS,
    "bare_engine": op(0, 1, bare=True) + known(11, 0) + NO_FIELDS + op(0, 2, bare=True) + known(4, 0)
    + bytes([3, 0]) + NO_FIELDS,
    "fail_and_heartbeat": op(4, 1) + known(5, 0) + op(3, 1) + known(5, 0) + text("no stock")
    + NO_FIELDS + op(4, 1) + known(5, 0),
    "early_completion": op(0, 1) + known(15, 0) + STATUS_APPROVED + op(0, 1) + known(15, 0)
    + NO_FIELDS + op(3, 1, bare=True) + known(16, 0) + text("early") + NO_FIELDS,
    "terminal_states": b"".join(op(0, 1) + known(i, r) + NO_FIELDS
                                for i, r in [(0, 0), (8, 0), (8, 2), (9, 0), (10, 0), (12, 0), (14, 0)]),
    "timers": op(4, 1) + known(1, 0) + op(5) + bytes([30]) + op(5) + bytes([60]) + op(0, 1)
    + known(1, 0) + NO_FIELDS,
    "start_and_cancel": op(6) + STATUS_APPROVED + op(6, 1) + fields_of(bytes([5]) + string("n"))
    + op(6) + BAD_FIELD + op(7) + bytes([3]) + op(7) + bytes([3]) + op(7) + bytes([200]),
    "synthesized": op(0, 3) + bytes([2, 1, 2, 2]) + NO_FIELDS + op(0, 3) + bytes([0, 0, 0])
    + NO_FIELDS + op(0, 3) + bytes([2, 1, 1]) + b"A" * 22 + NO_FIELDS,
}
for name, data in complete.items():
    write("fuzz_complete", name, data)
