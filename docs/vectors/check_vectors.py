#!/usr/bin/env python3
"""Independent check of the known-answer vectors in docs/format.md (Coffer format v1).

Written from docs/format.md alone (no Rust sources), as a second implementation of the
format. Needs Python >= 3.11 and the PyPI packages `cryptography` and `blake3`:

    python3 -m venv /tmp/vv && /tmp/vv/bin/pip install cryptography blake3
    /tmp/vv/bin/python docs/vectors/check_vectors.py [--all-bits]

Exits 0 and prints "all vectors OK" only if every check passes.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import random
import struct
import sys
from dataclasses import dataclass

try:
    from blake3 import blake3
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ImportError as e:  # pragma: no cover
    sys.exit(f"check_vectors.py: missing dependency ({e}); "
             "install with: pip install cryptography blake3")


# ---------------------------------------------------------------------------------------------
# Errors


class Fail(Exception):
    """A vector (or a mutated vector) does not verify."""


class WrongKey(Fail):
    """key_check mismatch (spec §4: 'wrong key', exit code 3)."""


class Integrity(Fail):
    """Authentication / structure failure (spec §4: integrity error, exit code 4)."""


class UnsupportedVersion(Fail):
    """Unknown format version (spec §3)."""


# ---------------------------------------------------------------------------------------------
# Primitives (§1)


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, t, i = b"", b"", 1
    while len(out) < length:
        t = hmac.new(prk, t + info + bytes([i]), hashlib.sha256).digest()
        out += t
        i += 1
    return out[:length]


def hmac_sha256(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def blake3_keyed(key: bytes, msg: bytes) -> bytes:
    return blake3(msg, key=key).digest(32)


def aead_open(key: bytes, nonce: bytes, aad: bytes, ct: bytes, what: str) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ct, aad)
    except InvalidTag:
        raise Integrity(f"{what}: AES-256-GCM authentication failed") from None


def u32le(x: int) -> bytes:
    return struct.pack("<I", x)


def u64be(x: int) -> bytes:
    return struct.pack(">Q", x)


# ---------------------------------------------------------------------------------------------
# Keys (§2)


@dataclass
class Keys:
    repo_id: bytes
    data_root: bytes
    meta_root: bytes
    chunk_id_key: bytes
    key_check_k: bytes
    config_mac_k: bytes
    chunker_seed: int
    key_check: bytes

    def pack_key(self, pack_id: bytes) -> bytes:
        return hkdf_expand(self.data_root, b"coffer/v1/pack-key/" + pack_id, 32)

    def object_key(self, kind: int, obj_id: bytes) -> bytes:
        return hkdf_expand(self.meta_root, b"coffer/v1/object-key/" + bytes([kind]) + obj_id, 32)


def derive_keys(k: bytes, repo_id: bytes) -> Keys:
    if len(k) != 32 or len(repo_id) != 16:
        raise ValueError("K must be 32 bytes and repo_id 16 bytes")
    prk = hkdf_extract(salt=repo_id, ikm=k)
    key_check_k = hkdf_expand(prk, b"coffer/v1/key-check", 32)
    return Keys(
        repo_id=repo_id,
        data_root=hkdf_expand(prk, b"coffer/v1/data", 32),
        meta_root=hkdf_expand(prk, b"coffer/v1/metadata", 32),
        chunk_id_key=hkdf_expand(prk, b"coffer/v1/chunk-id", 32),
        key_check_k=key_check_k,
        config_mac_k=hkdf_expand(prk, b"coffer/v1/config-mac", 32),
        chunker_seed=int.from_bytes(hkdf_expand(prk, b"coffer/v1/chunker-seed", 8), "little"),
        key_check=hmac_sha256(key_check_k, b"coffer/v1/key-check-message/" + repo_id),
    )


# ---------------------------------------------------------------------------------------------
# Header (§3)

MAGIC = b"COFR"
VERSION = 0x01
KIND_CONFIG, KIND_PACK, KIND_BLOB, KIND_TRAILER = 0x01, 0x10, 0x11, 0x12
KIND_INDEX, KIND_SNAPSHOT, KIND_CONDEMNED, KIND_SESSION = 0x20, 0x30, 0x40, 0x50


def header(kind: int) -> bytes:
    return MAGIC + bytes([VERSION, kind])


def check_header(obj: bytes, kind: int, what: str) -> None:
    if len(obj) < 6:
        raise Integrity(f"{what}: shorter than the 6-byte header")
    if obj[:4] != MAGIC:
        raise Integrity(f"{what}: bad magic {obj[:4]!r}")
    if obj[4] != VERSION:
        raise UnsupportedVersion(f"{what}: unsupported format version {obj[4]}")
    if obj[5] != kind:
        raise Integrity(f"{what}: wrong kind 0x{obj[5]:02x}, expected 0x{kind:02x}")


# ---------------------------------------------------------------------------------------------
# Postcard 1.x decoding (only what the vectors need)


class Reader:
    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def fail(self, msg: str) -> Integrity:
        return Integrity(f"{self.what}: postcard: {msg} at byte {self.pos}")

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(f"need {n} bytes, have {len(self.data) - self.pos}")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def varint(self, bits: int) -> int:
        # LEB128-style: 7 bits per byte, least significant group first, high bit = continuation.
        max_bytes = (bits + 6) // 7
        value = 0
        for i in range(max_bytes):
            b = self.take(1)[0]
            value |= (b & 0x7F) << (7 * i)
            if not b & 0x80:
                if value >= 1 << bits:
                    raise self.fail(f"varint overflows u{bits}")
                return value
        raise self.fail(f"varint longer than {max_bytes} bytes")

    def u32(self) -> int:
        return self.varint(32)

    def u64(self) -> int:
        return self.varint(64)

    def usize(self) -> int:  # lengths; usize is 64-bit on the writer's platforms
        return self.varint(64)

    def i32(self) -> int:
        n = self.varint(32)
        return (n >> 1) ^ -(n & 1)

    def i64(self) -> int:
        n = self.varint(64)
        return (n >> 1) ^ -(n & 1)

    def array(self, n: int) -> bytes:  # [u8; N]: inline, no length
        return self.take(n)

    def seq(self, elem):
        n = self.usize()
        if n > len(self.data) - self.pos:  # every element takes >= 1 byte
            raise self.fail(f"sequence length {n} exceeds remaining input")
        return [elem(self) for _ in range(n)]

    def variant(self, names: list[str]) -> str:
        idx = self.u32()
        if idx >= len(names):
            raise self.fail(f"unknown enum variant {idx}")
        return names[idx]

    def finish(self) -> None:
        if self.pos != len(self.data):
            raise self.fail(f"{len(self.data) - self.pos} trailing bytes")


def read_chunker(r: Reader) -> dict:
    return {"min": r.u32(), "avg": r.u32(), "max": r.u32()}


# KeyMode: §4 names the type but not its variants. §9 calls the vector "recovery-key mode" and
# it encodes as variant index 0 with no payload; other variants cannot be decoded from the spec.
KEY_MODES = ["RecoveryKey"]


def read_config_body(r: Reader) -> dict:
    return {
        "repo_id": r.array(16),
        "created_ns": r.i64(),
        "key_mode": r.variant(KEY_MODES),
        "file_chunker": read_chunker(r),
        "db_chunker": read_chunker(r),
        "pack_size": r.u32(),
        "zstd_level": r.i32(),
        "key_check": r.array(32),
    }


def read_blob_location(r: Reader) -> dict:
    return {
        "id": r.array(32),
        "kind": r.variant(["Data", "Tree"]),
        "index": r.u32(),
        "offset": r.u32(),
        "length": r.u32(),
        "raw_length": r.u32(),
        "compression": r.variant(["None", "Zstd"]),
    }


def read_index_pack(r: Reader) -> dict:
    return {"id": r.array(32), "size": r.u64(), "blobs": r.seq(read_blob_location)}


def read_index_file(r: Reader) -> dict:
    return {"supersedes": r.seq(lambda rr: rr.array(32)), "packs": r.seq(read_index_pack)}


# ---------------------------------------------------------------------------------------------
# Config (§4)


def open_config(obj: bytes, k: bytes) -> tuple[dict, Keys]:
    check_header(obj, KIND_CONFIG, "config")
    if len(obj) < 6 + 64:
        raise Integrity("config: too short")
    signed, checksum, mac = obj[:-64], obj[-64:-32], obj[-32:]
    if hashlib.sha256(signed).digest() != checksum:
        raise Integrity("config: SHA-256 checksum mismatch (damaged)")
    r = Reader(signed[6:], "config body")
    body = read_config_body(r)
    r.finish()
    keys = derive_keys(k, body["repo_id"])
    if not hmac.compare_digest(keys.key_check, body["key_check"]):
        raise WrongKey("config: key_check mismatch (wrong key)")
    if not hmac.compare_digest(hmac_sha256(keys.config_mac_k, signed), mac):
        raise Integrity("config: HMAC mismatch (config altered)")
    return body, keys


# ---------------------------------------------------------------------------------------------
# Packs (§6)

MAX_RAW_LENGTH = 64 * 1024 * 1024


def padme(length: int) -> int:
    """Padmé (Nikitin et al., PETS 2019): keep the top floor(log2 E)+1 bits of the mantissa."""
    if length < 2:
        return length
    e = length.bit_length() - 1          # floor(log2 L)
    s = e.bit_length()                   # floor(log2 E) + 1
    last_bits = e - s
    mask = (1 << last_bits) - 1
    return (length + mask) & ~mask


def open_pack(obj: bytes, pack_id: bytes, keys: Keys) -> tuple[list[dict], list[bytes], dict]:
    check_header(obj, KIND_PACK, "pack")
    if len(obj) < 6 + 4:
        raise Integrity("pack: too short")
    tlen = struct.unpack("<I", obj[-4:])[0]
    tstart = len(obj) - 4 - tlen
    if tlen < 16 + 4 or tstart < 6:
        raise Integrity(f"pack: trailer length {tlen} out of range")
    pkey = keys.pack_key(pack_id)
    tpt = aead_open(pkey, b"\xff\xff\xff\xff" + b"\x00" * 8, header(KIND_TRAILER) + pack_id,
                    obj[tstart:tstart + tlen], "pack trailer")
    m = struct.unpack("<I", tpt[:4])[0]
    if m > len(tpt) - 4:
        raise Integrity(f"pack trailer: m={m} exceeds plaintext")
    r = Reader(tpt[4:4 + m], "pack trailer")
    locs = r.seq(read_blob_location)
    r.finish()
    pad = tpt[4 + m:]
    if any(pad):
        raise Integrity("pack trailer: non-zero padding")
    unpadded = len(obj) - len(pad)
    if len(obj) != padme(unpadded):
        raise Integrity(f"pack: length {len(obj)} != Padmé({unpadded}) = {padme(unpadded)}")

    plaintexts = []
    expect_offset = 6
    for i, loc in enumerate(locs):
        if loc["index"] != i:
            raise Integrity(f"pack blob {i}: index field {loc['index']}")
        if loc["offset"] != expect_offset or loc["length"] < 16 \
                or loc["offset"] + loc["length"] > tstart:
            raise Integrity(f"pack blob {i}: offset/length {loc['offset']}/{loc['length']} "
                            "do not tile the pack")
        expect_offset = loc["offset"] + loc["length"]
        if loc["raw_length"] > MAX_RAW_LENGTH:
            raise Integrity(f"pack blob {i}: raw_length {loc['raw_length']} > 64 MiB")
        kind_byte = {"Data": 0, "Tree": 1}[loc["kind"]]
        stored = aead_open(pkey, b"\x00" * 4 + u64be(i),
                           header(KIND_BLOB) + pack_id + loc["id"] + bytes([kind_byte]),
                           obj[loc["offset"]:loc["offset"] + loc["length"]], f"pack blob {i}")
        if loc["compression"] == "Zstd":
            raise Fail(f"pack blob {i}: zstd blobs are not supported by this checker")
        if len(stored) != loc["raw_length"]:
            raise Integrity(f"pack blob {i}: {len(stored)} bytes, raw_length {loc['raw_length']}")
        if blake3_keyed(keys.chunk_id_key, stored) != loc["id"]:
            raise Integrity(f"pack blob {i}: keyed BLAKE3 does not match its id")
        plaintexts.append(stored)
    if expect_offset != tstart:
        raise Integrity("pack: blobs do not end where the trailer starts")
    return locs, plaintexts, {"trailer_len": tlen, "m": m, "pad": len(pad), "unpadded": unpadded}


# ---------------------------------------------------------------------------------------------
# Metadata objects (§7)


def open_metadata(obj: bytes, kind: int, obj_id: bytes, keys: Keys, what: str) -> bytes:
    check_header(obj, kind, what)
    return aead_open(keys.object_key(kind, obj_id), b"\x00" * 12, header(kind) + obj_id,
                     obj[6:], what)


def open_index_file(obj: bytes, obj_id: bytes, keys: Keys) -> dict:
    r = Reader(open_metadata(obj, KIND_INDEX, obj_id, keys, "index file"), "index file")
    v = read_index_file(r)
    r.finish()
    return v


# ---------------------------------------------------------------------------------------------
# Vectors (§9)

V_KEY_CHECK_0 = "252f69ddda530cb0616d1386bcee6174f5a1a6079d6f46677716a9a7a4a666f3"
V_BLAKE3_COFFER_0 = "762f4fb3f2e9712b931b50a15afcd55d6814ed4473ca05f8f7f0cef851fc0096"
V_CHUNKER_SEED_0 = 2057442283796367360
V_CONFIG = bytes.fromhex(
    "434f46520101070707070707070707070707070707078080d0e2c6bfce972f00808020808040808080048080"
    "0180800480801080808008062d191747e61b1d721e9f47ff6dfe909875d24e626e0167593786fd051bfcb35e"
    "c8558044abb6e192cfd1b5998a583e05f7ca291b5ed941d1b743a8eef3dfc51473bbe77b77a1b4fdfcc9796a"
    "20e474e51e4ada2fc6e541a4d6b5da21e35da119")
V_PACK = bytes.fromhex(
    "434f4652011040a27778abddb96043ba4172e409101c3758fdb9aa3394a53ad63f9c50b772301bd32173fff1"
    "c44991d38c7ca847c512085475454b88366c2b46fbd1bdc77259c3076f3b90c83549783c40e38f1df61f633b"
    "353e637633e373b8caabfb4c41000000")
V_INDEX = bytes.fromhex(
    "434f4652012054955160fb7bbae142b978b555ff84ce2743e566217ab206552eb1135bfdcaa58263eb6dd52d"
    "844ae876f2384af83070bc2342ea")

K42, REPO07 = b"\x42" * 32, b"\x07" * 16
PACK_ID, INDEX_ID = b"\x11" * 32, b"\x22" * 32

failures: list[str] = []


def check(cond: bool, msg: str) -> None:
    if cond:
        print(f"  ok   {msg}")
    else:
        print(f"  FAIL {msg}")
        failures.append(msg)


def step(name: str, fn) -> None:
    print(name)
    try:
        fn()
    except Fail as e:
        print(f"  FAIL {e}")
        failures.append(f"{name}: {e}")


def check_zero_keys() -> None:
    keys = derive_keys(b"\x00" * 32, b"\x00" * 16)
    kc = keys.key_check.hex()
    check(kc == V_KEY_CHECK_0, f"key_check = {kc}"
          + ("" if kc == V_KEY_CHECK_0 else f", spec says {V_KEY_CHECK_0}"))
    b = blake3_keyed(keys.chunk_id_key, b"coffer").hex()
    check(b == V_BLAKE3_COFFER_0, f"BLAKE3-keyed(chunk_id_key, \"coffer\") = {b}"
          + ("" if b == V_BLAKE3_COFFER_0 else f", spec says {V_BLAKE3_COFFER_0}"))
    seed = keys.chunker_seed
    check(seed == V_CHUNKER_SEED_0, f"chunker_seed = {seed}"
          + ("" if seed == V_CHUNKER_SEED_0 else f", spec says {V_CHUNKER_SEED_0}"))


def check_config() -> None:
    body, keys = open_config(V_CONFIG, K42)
    check(True, "config header, key_check (constant-time) and HMAC verify under K = 42×32")
    for name, value in body.items():
        shown = value.hex() if isinstance(value, bytes) else value
        print(f"       {name}: {shown}")
    check(body["repo_id"] == REPO07, "repo_id = 07×16")
    check(body["created_ns"] == 1700000000000000000, "created_ns = 1700000000000000000")
    check(body["key_mode"] == "RecoveryKey", "key_mode = recovery-key (variant 0)")
    check(body["file_chunker"] == {"min": 524288, "avg": 1048576, "max": 8388608},
          "file_chunker = 524288/1048576/8388608 (§5)")
    check(body["db_chunker"] == {"min": 16384, "avg": 65536, "max": 262144},
          "db_chunker = 16384/65536/262144 (§5)")
    check(body["pack_size"] == 16 * 1024 * 1024, "pack_size = 16 MiB")
    check(body["zstd_level"] == 3, "zstd_level = 3")
    check(body["key_check"] == derive_keys(K42, REPO07).key_check,
          "stored key_check equals HMAC(key_check_k, label || repo_id)")
    try:
        open_config(V_CONFIG, b"\x43" + K42[1:])
        check(False, "wrong K is rejected")
    except WrongKey:
        check(True, "wrong K (43 42…42) is rejected as 'wrong key' (key_check mismatch)")
    except Fail as e:
        check(False, f"wrong K rejected, but not as wrong key: {e}")


def check_pack() -> None:
    keys = derive_keys(K42, REPO07)
    locs, pts, info = open_pack(V_PACK, PACK_ID, keys)
    print(f"       pack length {len(V_PACK)}, trailer {info['trailer_len']} bytes, "
          f"m = {info['m']}, pad = {info['pad']}, unpadded L = {info['unpadded']}")
    for loc in locs:
        print("       BlobLocation " + ", ".join(
            f"{k}: {v.hex() if isinstance(v, bytes) else v}" for k, v in loc.items()))
    check(True, "header, trailer length, trailer AEAD, BlobLocation postcard, blob AEAD verify")
    check(len(locs) == 1, "trailer lists exactly one blob")
    check(pts == [b"hello, coffer"], f"blob plaintext = {pts[0]!r}" if pts else "blob plaintext")
    check(locs[0]["kind"] == "Data" and locs[0]["compression"] == "None",
          "blob is an uncompressed data blob")
    check(blake3_keyed(keys.chunk_id_key, b"hello, coffer") == locs[0]["id"],
          "BLAKE3-keyed(chunk_id_key, plaintext) == id")
    check(len(V_PACK) == padme(info["unpadded"]),
          f"pack length {len(V_PACK)} == Padmé({info['unpadded']}) = {padme(info['unpadded'])}")


def check_index() -> None:
    keys = derive_keys(K42, REPO07)
    v = open_index_file(V_INDEX, INDEX_ID, keys)
    print(f"       supersedes: {[x.hex() for x in v['supersedes']]}")
    for p in v["packs"]:
        print(f"       pack id: {p['id'].hex()}, size: {p['size']}, blobs: {p['blobs']}")
    check(True, "index file header and AEAD verify under object_key(0x20, 22×32)")
    check(v == {"supersedes": [], "packs": [{"id": PACK_ID, "size": 123, "blobs": []}]},
          "IndexFile { supersedes: [], packs: [IndexPack { id: 11×32, size: 123, blobs: [] }] }")


def flip_positions(nbits: int, all_bits: bool, rng: random.Random) -> list[int]:
    if all_bits or nbits <= 200:
        return list(range(nbits))
    # the first 48 bits (header) and last 32 bits always, the rest sampled
    fixed = set(range(48)) | set(range(nbits - 32, nbits))
    rest = [i for i in range(nbits) if i not in fixed]
    return sorted(fixed | set(rng.sample(rest, 200 - len(fixed))))


def check_bit_flips(all_bits: bool) -> None:
    keys = derive_keys(K42, REPO07)
    rng = random.Random(20240601)
    cases = [
        ("config", V_CONFIG, lambda b: open_config(b, K42)),
        ("pack", V_PACK, lambda b: open_pack(b, PACK_ID, keys)),
        ("index file", V_INDEX, lambda b: open_index_file(b, INDEX_ID, keys)),
    ]
    for name, vec, opener in cases:
        try:
            opener(vec)
        except Fail as e:
            check(False, f"{name}: bit-flip test skipped, the unmodified vector fails ({e})")
            continue
        positions = flip_positions(len(vec) * 8, all_bits, rng)
        undetected, crashed, kinds = [], [], {}
        for bit in positions:
            mutated = bytearray(vec)
            mutated[bit // 8] ^= 1 << (bit % 8)
            try:
                opener(bytes(mutated))
                undetected.append(bit)
            except Fail as e:
                kinds[type(e).__name__] = kinds.get(type(e).__name__, 0) + 1
            except Exception as e:  # a checker bug, not a detection
                crashed.append(f"bit {bit}: {type(e).__name__}: {e}")
        summary = ", ".join(f"{k} {v}" for k, v in sorted(kinds.items()))
        check(not undetected and not crashed,
              f"{name}: all {len(positions)} of {len(vec) * 8} single-bit flips rejected "
              f"({summary})" + (f"; UNDETECTED bits {undetected}" if undetected else "")
              + (f"; CHECKER ERRORS {crashed[:3]}" if crashed else ""))
    # the same bytes under another name, or under another repository's keys, must fail too
    try:
        open_pack(V_PACK, b"\x12" + PACK_ID[1:], keys)
        check(False, "pack under a different pack_id is rejected")
    except Fail:
        check(True, "pack under a different pack_id (renamed) is rejected")
    try:
        open_index_file(V_INDEX, b"\x23" + INDEX_ID[1:], keys)
        check(False, "index file under a different id is rejected")
    except Fail:
        check(True, "index file under a different id (renamed) is rejected")
    try:
        open_pack(V_PACK, PACK_ID, derive_keys(K42, b"\x08" + REPO07[1:]))
        check(False, "pack under another repository's keys is rejected")
    except Fail:
        check(True, "pack under another repository's keys is rejected")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all-bits", action="store_true",
                    help="flip every bit of each vector instead of ~200 sampled positions")
    args = ap.parse_args()

    step("1. keys for K = 00×32, repo_id = 00×16", check_zero_keys)
    step("2. config vector (K = 42×32, repo_id = 07×16)", check_config)
    step("3. pack vector (pack_id = 11×32)", check_pack)
    step("4. index-file vector (id = 22×32)", check_index)
    step("5. negative checks", lambda: check_bit_flips(args.all_bits))

    if failures:
        print(f"\n{len(failures)} check(s) FAILED:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        return 1
    print("\nall vectors OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
