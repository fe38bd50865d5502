#!/usr/bin/env python3
"""Writes the seed inputs of the vault fuzz targets to fuzz/seeds/<target>/.

    python3 fuzz/seeds/generate.py

Deterministic. `fuzz/ci.sh` copies fuzz/seeds/<target>/ into the (git-ignored)
corpus fuzz/corpus/<target>/ before each run, so every run starts from valid
inputs. Layouts: crates/coffer-vault-proto/src/{messages,channel,realm}.rs,
crates/coffer-vault-core/src/{anchor,record,log,transition}.rs; the vault_core input format
is described in fuzz/fuzz_targets/vault_core.rs.
"""
import json
import os
import random
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
rnd = random.Random(0xC0FFE)

MESSAGE_LEN = 448
TIME = 1_800_000_000_000


def b(n):
    return bytes(rnd.getrandbits(8) for _ in range(n))


def pad(m, n=MESSAGE_LEN):
    assert len(m) <= n
    return m + bytes(n - len(m))


def write(target, name, data):
    d = os.path.join(HERE, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


t = struct.pack(">Q", TIME)
requests = {
    "register_start": pad(b"\x01\x01" + t + b"\x00\x0a" + b(32)),
    "register_start_replace": pad(b"\x01\x01" + t + b"\x01\x03" + b(32)),
    "register_finish": pad(b"\x01\x02" + t + b(192) + b"\x3c" + b(60)),
    "login_start": pad(b"\x01\x03" + t + b(96)),
    "login_finish": pad(b"\x01\x04" + t + b(64)),
    "delete": pad(b"\x01\x05" + t),
}
responses = {
    "register_started": pad(b"\x01\x81" + b(64)),
    "registered": pad(b"\x01\x82\x0a"),
    "login_started": pad(b"\x01\x83\x09" + b(320)),
    "login_ok": pad(b"\x01\x84\x0a\x3c" + b(60)),
    "deleted": pad(b"\x01\x85"),
    "error_wrong_password": pad(b"\x01\xee\x02\x04" + t),
    "error_clock_skew": pad(b"\x01\xee\x07\xff" + t),
}
for name, m in requests.items():
    write("vault_request", name, m)
for name, m in responses.items():
    write("vault_response", name, m)

# Frames: open = 1 | 1 | enc[32] | ct[448+16]; data/reply = 1 | 2/3 | session[16] | ct[448+16].
write("vault_frame", "open", b"\x01\x01" + b(32 + MESSAGE_LEN + 16))
write("vault_frame", "data", b"\x01\x02" + b(16 + MESSAGE_LEN + 16))
write("vault_frame", "reply", b"\x01\x03" + b(16 + MESSAGE_LEN + 16))
for name in ("login_started", "error_wrong_password", "login_ok"):
    write("vault_frame", "plain_" + name, responses[name])  # sealed-reply mode


def realm(memory_kib, iterations, address):
    return {
        "format": "coffer-realm/1",
        "realm_id": b(16).hex(),
        "public_key": b(32).hex(),
        "ksf": {
            "algorithm": "argon2id",
            "memory_kib": memory_kib,
            "iterations": iterations,
            "parallelism": 1,
        },
        "max_attempts_limit": 10,
        "address": address,
    }


write("vault_realm", "default.json",
      json.dumps(realm(65536, 3, "http://127.0.0.1:8420"), indent=2).encode())
write("vault_realm", "minimum.json",
      json.dumps(realm(19456, 1, "mem:"), separators=(",", ":")).encode())

# NVRAM anchor; marker body (two anchors) plus a tamper position and mask;
# record plaintexts (live, erased).
write("vault_anchor", "nvram", b"CVNV\x01" + struct.pack(">Q", 7) + b(32))
write("vault_anchor", "marker_body",
      struct.pack(">Q", 7) + b(32) + struct.pack(">Q", 8) + b(32) + b"\x05\x80")
RECORD_LEN = 4 + 16 + 192 + 1 + 96
write("vault_anchor", "record_live",
      pad(b"\x02\x01\x0a\x09" + b(16) + b(192) + b"\x3c" + b(60), RECORD_LEN))
write("vault_anchor", "record_erased", pad(b"\x02\x02", RECORD_LEN))


# vault_core: frames `ctl | len u16 | payload`; ctl = how | data<<2 | who<<3 | template<<5.
def frame(how, data, who, template=0, payload=b""):
    ctl = how | (data << 2) | (who << 3) | (template << 5)
    return bytes([ctl]) + struct.pack(">H", len(payload)) + payload


RAW, TAMPER, SEALED, SEALED_RAW = 0, 1, 2, 3
OPEN, DATA = 0, 1
ALICE, BOB, CAROL, DAVE = 0, 1, 2, 3
REG_START, REG_FINISH, LOGIN_START, LOGIN_FINISH, DELETE = range(5)
core = {
    # alice is registered: AlreadyRegistered.
    "register_alice": frame(SEALED, OPEN, ALICE, REG_START),
    # carol registers: RegisterStart, then RegisterFinish on channel 1.
    "register_carol": frame(SEALED, OPEN, CAROL, REG_START)
    + frame(SEALED, DATA, 1, REG_FINISH),
    # alice re-registers with `replace` (byte 10 of the plaintext).
    "replace_alice": frame(SEALED, OPEN, ALICE, REG_START, b"\x00\x0a\x01")
    + frame(SEALED, DATA, 1, REG_FINISH),
    # bob logs in with a wrong KE3.
    "login_bob": frame(SEALED, OPEN, BOB, LOGIN_START)
    + frame(SEALED, DATA, 1, LOGIN_FINISH),
    # alice's pending session gets a wrong KE3, then her last attempts go.
    "alice_to_zero": frame(SEALED, DATA, 0, LOGIN_FINISH)
    + frame(SEALED, OPEN, ALICE, LOGIN_START)
    + frame(SEALED, OPEN, ALICE, LOGIN_START)
    + frame(SEALED, OPEN, ALICE, LOGIN_START),
    # delete without a login.
    "delete_dave": frame(SEALED, OPEN, DAVE, DELETE),
    # the captured frames, untouched (valid) and with one bit flipped.
    "tamper_open": frame(TAMPER, OPEN, ALICE, 0, b"\x00\x00"),
    "tamper_open_flip": frame(TAMPER, OPEN, ALICE, 0, b"\x00\x30\x01"),
    "tamper_data": frame(TAMPER, DATA, 0, 0, b"\x00\x00"),
    "tamper_data_flip": frame(TAMPER, DATA, 0, 0, b"\x01\x00\x80"),
    # a plaintext written out (zero-padded to 448 bytes), sealed: KE1 of zeros.
    "sealed_plain": frame(SEALED_RAW, OPEN, ALICE, 0, b"\x01\x03" + t + bytes(96)),
    # raw frames of the right sizes.
    "raw_open": frame(RAW, OPEN, ALICE, 0, b"\x01\x01" + b(32 + MESSAGE_LEN + 16)),
    "raw_data": frame(RAW, DATA, 0, 0, b"\x01\x02" + b(16 + MESSAGE_LEN + 16)),
}
for name, data in core.items():
    write("vault_core", name, data)

# Realm log (vault_log; layouts: crates/coffer-vault-core/src/log.rs, ADR 0012) and batch bodies
# (vault_body; crates/coffer-vault-core/src/transition.rs). Big-endian integers.
import hashlib

GROUP = b(16)
EMPTY_BODY = hashlib.sha256(struct.pack(">I", 0)).digest()


def entry(epoch, index, prev, leader, kind, body_hash, tail=b""):
    return (b"CVLE" + b"\x02" + GROUP + struct.pack(">QQ", epoch, index) + prev
            + bytes([leader, kind]) + struct.pack(">HH", 0, 65535) + b(32) + body_hash + tail)


write("vault_log", "genesis", entry(0, 1, bytes(32), 1, 1, EMPTY_BODY, b"\x03\x01\x02\x03"))
write("vault_log", "leader", entry((1 << 8) | 2, 2, b(32), 2, 2, EMPTY_BODY))
write("vault_log", "batch", entry((1 << 8) | 2, 3, b(32), 2, 3, b(32)))
write("vault_log", "ack",
      b"\x03" + GROUP + struct.pack(">QQQ", (1 << 8) | 2, (1 << 8) | 2, 3) + b(32) + b(32))


def slot(promised, last, index, mac):
    return GROUP + b"\x01" + struct.pack(">QQQ", promised, last, index) + mac


write("vault_log", "slot", slot((1 << 8) | 2, (1 << 8) | 2, 3, b(32)))
write("vault_log", "nvram",
      b"CVNV\x02" + b(16) + b"\x01\x01" + slot((1 << 8) | 2, (1 << 8) | 2, 3, b(32)))

SEALED = 349
ids = sorted(b(32) for _ in range(3))
write("vault_body", "empty", struct.pack(">I", 0))
write("vault_body", "three",
      struct.pack(">I", 3) + b"".join(i + b(SEALED) for i in ids))
