#!/usr/bin/env python3
"""Reproducible benchmark dataset for Coffer: a chat-app SQLite DB plus a media tree.

    gen_dataset.py OUTDIR [--scale S]          # generate OUTDIR/msgstore.db and OUTDIR/media/
    gen_dataset.py OUTDIR --mutate             # apply one incremental change (1% new messages, 20 files)

Standard library only (Python >= 3.11). Everything is derived from --seed, so two runs with the
same seed and sizes give byte-identical media files and the same logical DB content (the DB file
itself is byte-identical too when the same SQLite version writes it). Each --mutate is numbered
(stored in the DB's `props` table), so the N-th mutation is the same on every copy.

Scale 1.0 = 1 GiB database + 2 GiB media (half incompressible images/videos, half compressible
documents and PCM voice notes). --db-bytes / --media-bytes override the scaled sizes.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import random
import sqlite3
import statistics
import struct
import sys
import time
from array import array

GiB = 1 << 30
KiB = 1 << 10
MiB = 1 << 20
DEFAULT_SEED = 20240229
# Whole DB file (tables + indexes) per messages row, measured with this generator. Chosen a little
# low so that the file ends up at or slightly above the requested size.
DB_BYTES_PER_MESSAGE = 170
START_MS = 1546300800000  # 2019-01-01T00:00:00Z: first message
END_MS = 1719792000000  # 2024-07-01T00:00:00Z: last message of the base dataset
MEDIA_START = 1672531200  # 2023-01-01: media files on disk span the last 18 months
MEDIA_END = 1719705600  # 2024-06-30
ME = 1  # contacts.id of the phone's owner
FIXED_DIR_MTIME = 1719792000

# Roughly frequency-ordered chat vocabulary; the long tail is filled with pseudo-words.
COMMON = """
i you the to a and it ok is me my that in of not so do have be for what are was this lol
just no yes on can we but like it's i'm know your get at with haha all go will how up don't
now out good too want if oh yeah see one about time got he then when why going u there she
think come back well where love they hi day would here did had more thanks sure been really
tomorrow today tonight call home need make much still let from right ya see_you xd okay
morning night haha_yes omg them could who need later let's some or wait yea want_to thank
nice maybe any going_to already lmao his her said an has as by people say work us very
after pls please na sorry man bro dude hey hello miss happy birthday great fine cool real
thing things over than only never again even other off new first last week weekend year
friday saturday sunday monday dinner lunch food eat eating coffee beer party game match
car bus train late early min minutes hour hours tmrw tho idk btw fr ngl tbh imo asap
ready leave leaving coming came done doing did_you fine_thanks bad sad mom dad sister brother
family kids baby school class exam study house room bed sleep tired sick doctor money pay
buy shop store open closed photo pic video send sent check look watch film movie song music
phone text message call_me voice busy free meet meeting office boss job plan plans trip
holiday beach rain sun cold hot weather outside inside car_park station airport flight
hotel ticket tickets price cheap expensive birthday_party gift present cake wine pizza
chicken rice tea water bottle best better worse worst funny crazy cute beautiful amazing
awesome perfect exactly true false maybe_later soon almost around near far left right
straight turn stop start finish end begin next previous same different easy hard
""".split()
# Multi-word units drawn like words (repeated n-grams) and whole stock messages.
PHRASES = """see you tomorrow|on my way|what time|i don't know|are you coming|i'm at home|i'll call you
later|let me know|good morning|good night|how are you|what are you doing|i think so|thank you so much|no
problem|talk later|just woke up|almost there|can you send|did you see|i'm so tired|see you soon|on the
way|at the station|in 5 min|in 10 minutes|at the weekend|what about you|me too|love you|miss you|for
dinner|after work|before lunch|are you free|i can't|we can|it was|there is|do you want|i need to|have
to go|going to be|a bit late|running late|the kids|the car|the train|the office|this evening|next
week|last night|happy birthday|congratulations|sounds good|of course|not sure|let's go|why not|i
told you|you know|by the way|right now|so much|a lot|so good|really nice|too bad|that's great|oh
no|no way|for sure|all good|take care|get well soon|safe trip|have fun|enjoy|call me when|text me
when|send me the|can you pick up|i'll be there|we're here|i'm here|where are you|who is coming|how
much is it|what do you think|do you have|did you get|i sent you|check your email|see the photo""".replace("\n"," ").split("|")
STOCK = """ok|Ok|OK 👍|okay|yes|Yes|no|No|haha|hahaha|Haha 😂|😂|😂😂😂|❤️|👍|lol|Lol|thanks|Thanks!|thank
you|Thank you ❤️|good night|Good night 😘|good morning|Good morning!|on my way|On my way|omw|see you|See
you soon|where are you?|Where are you?|call me|Call me|coming|5 min|sure|Sure|yes please|no worries|No
problem|cool|nice|Nice!|wow|Wow|😍|🙏|love you|Love you ❤️|me too|Me too|same|true|exactly|done|Done ✅|i'm
here|I'm here|here|home|at home|almost there|ok see you|see you later|bye|Bye|👋|tomorrow?|now?|when?|what
time?|why?|really?|Really?|what?|?|!|sorry|Sorry|np|ty|thx|k|kk|yep|yup|nope|great|Great|perfect|Perfect|awesome|happy
birthday!|Happy birthday 🎉🥳|congrats|Congratulations!|get well soon|safe trip|have fun|enjoy|miss you|<Media
omitted>|This message was deleted""".replace("\n"," ").split("|")
EMOJI = ["😂", "❤️", "👍", "🙏", "😍", "😭", "😊", "🤣", "🔥", "😅", "👌", "🎉", "😘", "🥰", "😁",
         "🙈", "💪", "😎", "🤔", "👀", "🥳", "😢", "😉", "✅", "👋"]
REACTIONS = ["❤️", "😂", "👍", "😮", "😢", "🙏"]
FIRST = ("Anna Ben Carla David Elena Felix Greta Hugo Ines Jonas Kai Lena Marco Nina Omar Paula "
         "Quentin Rosa Sami Tara Umut Vera Wen Xenia Yusuf Zoe Ahmed Bea Chen Diego Emma Farid "
         "Gabi Hana Ivan Julia Kofi Lara Mia Noah Olga Priya Raj Sara Tom Uma Victor Wiebke "
         "Yara Zara Luca Sofia Mateo Aisha Leon Maya Amir Chloe").split()
LAST = ("Müller Schmidt Garcia Rossi Silva Nguyen Kim Ali Cohen Novak Kowalski Jensen Smith "
        "Brown Dubois Martin Lopez Santos Costa Yilmaz Ivanova Tanaka Sato Khan Patel Singh "
        "Okafor Mensah Haddad Larsen Berg Fischer Weber Meyer Wagner Becker Hoffmann").split()
GROUPS = ["Family", "Football Sunday", "Flat", "Book club", "Climbing crew", "Work", "Team",
          "Parents class 3b", "Birthday", "Trip", "Neighbours", "Uni friends", "Choir",
          "Running", "Board games", "Cousins", "Wedding", "Kita", "Garden", "Band"]
DOC_STEMS = ["notes", "report", "invoice", "menu", "itinerary", "minutes", "contacts", "export",
             "chat", "schedule", "recipe", "shopping list", "lease", "CV", "homework"]


def log(msg: str) -> None:
    print(f"[gen_dataset {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Text


def build_vocab(seed: int) -> list[str]:
    rng = random.Random(f"{seed}:vocab")
    words = [w.replace("_", " ") for w in COMMON]
    # Sprinkle emoji and names among the frequent words, numbers and times in the middle.
    for i, e in enumerate(EMOJI):
        words.insert(min(len(words), 12 + i * 9), e)
    for i, n in enumerate(FIRST):
        words.insert(min(len(words), 60 + i * 7), n)
    for i, p in enumerate(PHRASES):
        words.insert(min(len(words), 20 + i * 6), p)
    words += [str(n) for n in range(1, 40)] + [f"{h}:{m:02d}" for h in range(6, 23) for m in (0, 15, 30, 45)]
    cons = "b c d f g h j k l m n p r s t v w z br ch st tr sh kl".split()
    vows = "a e i o u a e o ie ou".split()
    seen = set(words)
    while len(words) < 4000:
        w = "".join(rng.choice(cons) + rng.choice(vows) for _ in range(rng.choice((1, 2, 2, 3, 3, 4))))
        if rng.random() < 0.3:
            w += rng.choice("nrsltx")
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def build_table(vocab: list[str], s: float = 1.1, slots: int = 65536) -> list[str]:
    """Lookup table of 2**16 slots, each word taking a share ~ 1/rank**s (Zipf)."""
    w = [1.0 / (r ** s) for r in range(1, len(vocab) + 1)]
    tot = sum(w)
    counts = [max(1, int(x / tot * slots)) for x in w]
    counts[0] += slots - sum(counts)
    assert counts[0] > 0
    table: list[str] = []
    for word, c in zip(vocab, counts):
        table.extend([word] * c)
    return table


class WordStream:
    """Fast Zipf word source: 16-bit random indices into a precomputed table."""

    def __init__(self, rng: random.Random, table: list[str], batch: int = 1 << 19):
        self.rng, self.table, self.batch = rng, table, batch
        self.buf: list[str] = []
        self.pos = 0

    def take(self, n: int) -> list[str]:
        if self.pos + n > len(self.buf):
            idx = array("H")
            idx.frombytes(self.rng.randbytes(2 * max(self.batch, n)))
            if sys.byteorder == "big":
                idx.byteswap()
            self.buf = self.buf[self.pos:] + list(map(self.table.__getitem__, idx))
            self.pos = 0
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out


def length_table(median: float, sigma: float, lo: int, hi: int, n: int = 4096) -> list[int]:
    nd = statistics.NormalDist(math.log(median), sigma)
    return [min(hi, max(lo, round(math.exp(nd.inv_cdf((i + 0.5) / n))))) for i in range(n)]


MSG_WORDS = length_table(7, 0.95, 1, 160)
STOCK_TABLE = build_table(STOCK, s=1.0, slots=4096)


class TextGen:
    def __init__(self, rng: random.Random, table: list[str]):
        self.rng = rng
        self.ws = WordStream(rng, table)

    def message(self) -> str:
        rng = self.rng
        if rng.random() < 0.3:
            return STOCK_TABLE[rng.getrandbits(12)]
        s = " ".join(self.ws.take(MSG_WORDS[rng.getrandbits(12)]))
        u = rng.random()
        if u < 0.4:
            s = s[:1].upper() + s[1:]
        u = rng.random()
        if u < 0.12:
            s += "?"
        elif u < 0.2:
            s += "!"
        elif u < 0.3:
            s += "."
        elif u < 0.42:
            s += " " + EMOJI[min(len(EMOJI) - 1, int(rng.expovariate(0.35)))]
        return s

    def words(self, n: int) -> str:
        return " ".join(self.ws.take(n))


# --------------------------------------------------------------------------------------------
# Database

SCHEMA = """
CREATE TABLE props (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE contacts (
  id INTEGER PRIMARY KEY,
  jid TEXT NOT NULL UNIQUE,
  display_name TEXT,
  phone TEXT,
  status_text TEXT,
  is_whatsapp_user INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE chats (
  id INTEGER PRIMARY KEY,
  jid TEXT NOT NULL UNIQUE,
  subject TEXT,
  is_group INTEGER NOT NULL,
  peer_id INTEGER REFERENCES contacts(id),
  created_timestamp INTEGER NOT NULL,
  archived INTEGER NOT NULL DEFAULT 0,
  muted_until INTEGER NOT NULL DEFAULT 0,
  last_message_id INTEGER,
  unseen_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE group_participants (
  chat_id INTEGER NOT NULL REFERENCES chats(id),
  contact_id INTEGER NOT NULL REFERENCES contacts(id),
  admin INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (chat_id, contact_id)
) WITHOUT ROWID;
CREATE TABLE messages (
  id INTEGER PRIMARY KEY,
  chat_id INTEGER NOT NULL REFERENCES chats(id),
  sender_id INTEGER NOT NULL REFERENCES contacts(id),
  from_me INTEGER NOT NULL,
  key_id TEXT NOT NULL,
  timestamp INTEGER NOT NULL,
  received_timestamp INTEGER,
  message_type INTEGER NOT NULL,
  status INTEGER NOT NULL,
  text TEXT,
  reply_to INTEGER,
  starred INTEGER NOT NULL DEFAULT 0,
  edit_version INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX messages_chat_ts ON messages(chat_id, timestamp);
CREATE INDEX messages_sender ON messages(sender_id);
CREATE UNIQUE INDEX messages_key ON messages(chat_id, from_me, key_id);
CREATE TABLE reactions (
  id INTEGER PRIMARY KEY,
  message_id INTEGER NOT NULL REFERENCES messages(id),
  sender_id INTEGER NOT NULL REFERENCES contacts(id),
  reaction TEXT NOT NULL,
  timestamp INTEGER NOT NULL
);
CREATE INDEX reactions_message ON reactions(message_id);
CREATE TABLE media_refs (
  id INTEGER PRIMARY KEY,
  message_id INTEGER NOT NULL REFERENCES messages(id),
  chat_id INTEGER NOT NULL,
  file_path TEXT,
  mime_type TEXT NOT NULL,
  file_size INTEGER NOT NULL,
  file_hash TEXT NOT NULL,
  media_key TEXT,
  width INTEGER,
  height INTEGER,
  duration INTEGER
);
CREATE INDEX media_refs_message ON media_refs(message_id);
"""

# message_type: 0 text, 1 image, 2 voice, 3 video, 9 document
MEDIA_KINDS = {
    1: ("IMG", "jpg", "image/jpeg", "WhatsApp Images"),
    2: ("PTT", "wav", "audio/wav", "WhatsApp Voice Notes"),
    3: ("VID", "mp4", "video/mp4", "WhatsApp Video"),
    9: ("DOC", "txt", "text/plain", "WhatsApp Documents"),
}


MIME_BY_EXT = {"txt": "text/plain", "json": "application/json", "html": "text/html", "csv": "text/csv",
               "vcf": "text/vcard", "xml": "application/xml"}


def ymd(ts_s: int) -> str:
    t = time.gmtime(ts_s)
    return f"{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}"


class MessageGen:
    """Stateful message stream: bursts of conversation in Zipf-popular chats."""

    P_CONTINUE = 0.85

    def __init__(self, rng, text, chats, members, mid, ts, mean_gap_ms, last_in_chat, media_seq=0):
        self.rng, self.text = rng, text
        self.chats = chats  # list of (chat_id, is_group, peer_id)
        self.members = members  # chat_id -> [contact ids] (groups)
        self.cum = []
        acc = 0.0
        for r in range(1, len(chats) + 1):
            acc += 1.0 / r ** 1.1
            self.cum.append(acc)
        self.mid, self.ts = mid, ts
        self.gap_cont = 0.15 * mean_gap_ms
        self.gap_switch = (mean_gap_ms - self.P_CONTINUE * self.gap_cont) / (1 - self.P_CONTINUE)
        self.last_in_chat = last_in_chat
        self.chat = chats[0]
        self.day_counter: dict[tuple[str, str], int] = {}
        self.reaction_rows = 0

    def _sender(self, chat, from_me):
        if from_me:
            return ME
        if chat[1]:
            m = self.members[chat[0]]
            return m[self.rng.randrange(len(m))]
        return chat[2]

    def batch(self, n, media_files=None):
        """Return (messages, reactions, media_refs) rows for the next n messages. media_files is an
        optional list of (message_type, relpath, size) to attach to the last messages."""
        rng, text = self.rng, self.text
        msgs, reacts, refs = [], [], []
        forced_from = n - len(media_files) if media_files else n + 1
        for i in range(n):
            self.mid += 1
            mid = self.mid
            if rng.random() > self.P_CONTINUE:
                self.chat = self.chats[rng.choices(range(len(self.chats)), cum_weights=self.cum)[0]]
                self.ts += 1 + int(rng.expovariate(1.0 / self.gap_switch))
            else:
                self.ts += 1 + int(rng.expovariate(1.0 / self.gap_cont))
            chat, ts = self.chat, self.ts
            cid = chat[0]
            from_me = 1 if rng.random() < 0.4 else 0
            sender = self._sender(chat, from_me)
            if from_me:
                key = "3EB0%016X" % rng.getrandbits(64)
                status = 13 if rng.random() < 0.9 else 5
                recv = None
            else:
                key = "3A%018X" % rng.getrandbits(72)
                status = 0
                recv = ts + rng.randrange(200, 5000)
            forced = None
            if i >= forced_from:
                forced = media_files[i - forced_from]
                mtype = forced[0]
            else:
                u = rng.random()
                mtype = 0 if u >= 0.15 else 1 if u < 0.10 else 3 if u < 0.115 else 2 if u < 0.14 else 9
            if mtype == 0:
                body = text.message()
            elif mtype == 1:
                body = text.message() if rng.random() < 0.25 else None
            elif mtype == 9 and forced:
                body = os.path.basename(forced[1])
            elif mtype == 9:
                body = f"{rng.choice(DOC_STEMS)}.{rng.choice(('pdf', 'docx', 'txt', 'xlsx'))}"
            else:
                body = None
            reply = None
            if rng.random() < 0.06 and cid in self.last_in_chat:
                reply = self.last_in_chat[cid]
            starred = 1 if rng.random() < 0.003 else 0
            msgs.append((mid, cid, sender, from_me, key, ts, recv, mtype, status, body, reply, starred, 0))
            self.last_in_chat[cid] = mid
            if rng.random() < 0.04:
                rs = self._sender(chat, rng.random() < 0.3)
                reacts.append((mid, rs, REACTIONS[min(5, int(rng.expovariate(0.8)))], ts + rng.randrange(1000, 3_600_000)))
            if mtype:
                prefix, ext, mime, folder = MEDIA_KINDS[mtype]
                if forced:
                    path, size = forced[1], forced[2]
                    mime = MIME_BY_EXT.get(path.rsplit(".", 1)[1], mime)
                else:
                    day = ymd(ts // 1000)
                    k = (prefix, day)
                    c = self.day_counter.get(k, 0)
                    self.day_counter[k] = c + 1
                    path = f"media/{folder}/{prefix}-{day}-WA{c:04d}.{ext}"
                    size = int(rng.lognormvariate(math.log({1: 180e3, 2: 6e5, 3: 4e6, 9: 3e5}[mtype]), 0.9))
                w = h = dur = None
                if mtype in (1, 3):
                    w, h = rng.choice(((1600, 1200), (1200, 1600), (1280, 720), (720, 1280), (1024, 768)))
                if mtype in (2, 3):
                    dur = max(1, size // (32000 if mtype == 2 else 250000))
                refs.append((mid, cid, path, mime, size,
                             base64.b64encode(rng.randbytes(32)).decode(),
                             base64.b64encode(rng.randbytes(32)).decode() if rng.random() < 0.4 else None,
                             w, h, dur))
        return msgs, reacts, refs


INSERT_MSG = "INSERT INTO messages VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
INSERT_REACT = "INSERT INTO reactions (message_id, sender_id, reaction, timestamp) VALUES (?,?,?,?)"
INSERT_REF = ("INSERT INTO media_refs (message_id, chat_id, file_path, mime_type, file_size, file_hash,"
              " media_key, width, height, duration) VALUES (?,?,?,?,?,?,?,?,?,?)")


def insert_rows(con, msgs, reacts, refs):
    con.executemany(INSERT_MSG, msgs)
    if reacts:
        con.executemany(INSERT_REACT, reacts)
    if refs:
        con.executemany(INSERT_REF, refs)


def load_chats(con):
    chats = [tuple(r) for r in con.execute("SELECT id, is_group, peer_id FROM chats ORDER BY id")]
    members: dict[int, list[int]] = {}
    for cid, contact in con.execute("SELECT chat_id, contact_id FROM group_participants ORDER BY chat_id, contact_id"):
        members.setdefault(cid, []).append(contact)
    return chats, members


def make_db(path: str, seed: int, db_bytes: int, media_bytes: int, table: list[str]) -> dict:
    rng = random.Random(f"{seed}:db")
    n_msgs = max(1000, db_bytes // DB_BYTES_PER_MESSAGE)
    scale = db_bytes / GiB
    n_contacts = max(40, min(2000, int(700 * math.sqrt(scale))))
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA page_size=4096")
    con.execute("PRAGMA journal_mode=OFF")  # bulk load; switched to WAL at the end
    con.execute("PRAGMA synchronous=OFF")
    con.execute("PRAGMA cache_size=-1048576")  # 1 GiB
    con.execute("PRAGMA temp_store=MEMORY")
    con.executescript(SCHEMA)
    con.execute("BEGIN")
    contacts = []
    tg = TextGen(rng, table)
    for cid in range(1, n_contacts + 1):
        phone = f"+{rng.choice((49, 44, 34, 33, 39, 1, 55, 91, 90, 31))}{rng.randrange(10**9, 10**10)}"
        name = "Me" if cid == ME else f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        status = tg.words(rng.randrange(1, 8)) if rng.random() < 0.5 else None
        contacts.append((cid, f"{phone[1:]}@s.whatsapp.net", name, phone, status, 1))
    con.executemany("INSERT INTO contacts VALUES (?,?,?,?,?,?)", contacts)
    chats_rows, parts = [], []
    peers = rng.sample(range(2, n_contacts + 1), int((n_contacts - 1) * 0.6))
    n_groups = max(5, n_contacts // 12)
    order = [("p", p) for p in peers] + [("g", g) for g in range(n_groups)]
    rng.shuffle(order)  # chat popularity (Zipf by position) is independent of chat kind
    for i, (kind, x) in enumerate(order, start=1):
        created = START_MS - rng.randrange(0, 3 * 365 * 86400) * 1000
        if kind == "p":
            chats_rows.append((i, contacts[x - 1][1], None, 0, x, created, 0, 0, None, 0))
        else:
            subject = f"{rng.choice(GROUPS)} {rng.choice(EMOJI)}" if rng.random() < 0.5 else rng.choice(GROUPS)
            chats_rows.append((i, f"120363{rng.randrange(10**11, 10**12)}@g.us", subject, 1, None, created,
                               1 if rng.random() < 0.1 else 0, 0, None, 0))
            members = sorted(rng.sample(range(2, n_contacts + 1), rng.randrange(3, min(60, n_contacts - 1))))
            parts += [(i, m, 1 if rng.random() < 0.1 else 0) for m in [ME] + members]
    con.executemany("INSERT INTO chats VALUES (?,?,?,?,?,?,?,?,?,?)", chats_rows)
    con.executemany("INSERT INTO group_participants VALUES (?,?,?)", parts)
    con.execute("COMMIT")
    chats, members = load_chats(con)
    gen = MessageGen(rng, TextGen(rng, table), chats, members, mid=0, ts=START_MS,
                     mean_gap_ms=(END_MS - START_MS) / n_msgs, last_in_chat={})
    t0, done, step = time.time(), 0, 100_000
    n_reacts = n_refs = 0
    while done < n_msgs:
        k = min(step, n_msgs - done)
        msgs, reacts, refs = gen.batch(k)
        con.execute("BEGIN")
        insert_rows(con, msgs, reacts, refs)
        con.execute("COMMIT")
        done += k
        n_reacts += len(reacts)
        n_refs += len(refs)
        if done % 1_000_000 < step or done == n_msgs:
            log(f"db: {done}/{n_msgs} messages, {os.path.getsize(path) / MiB:.0f} MiB, {time.time() - t0:.0f}s")
    con.execute("BEGIN")
    con.execute("UPDATE chats SET last_message_id = (SELECT max(id) FROM messages m WHERE m.chat_id = chats.id)")
    props = {"bench_seed": seed, "bench_db_bytes": db_bytes, "bench_media_bytes": media_bytes,
             "bench_generation": 0, "bench_base_messages": n_msgs, "bench_messages": n_msgs,
             "schema_version": 1}
    con.executemany("INSERT INTO props VALUES (?,?)", [(k, str(v)) for k, v in props.items()])
    con.execute("COMMIT")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    os.utime(path, (gen.ts // 1000, gen.ts // 1000))
    return {"messages": n_msgs, "reactions": n_reacts, "media_refs": n_refs, "contacts": n_contacts,
            "chats": len(chats), "db_file_bytes": os.path.getsize(path)}


# --------------------------------------------------------------------------------------------
# Media

JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xdb\x00\x43\x00"
MP4_HEAD = struct.pack(">I", 32) + b"ftypisom" + struct.pack(">I", 0x200) + b"isomiso2avc1mp41"
# (category, share of its half, folder, prefix, ext, median size, sigma)
INCOMPRESSIBLE = [(1, 0.35, "WhatsApp Images", "IMG", "jpg", 220e3, 0.9),
                  (3, 0.65, "WhatsApp Video", "VID", "mp4", 4e6, 0.8)]
COMPRESSIBLE = [(9, 0.65, "WhatsApp Documents", "DOC", None, 400e3, 1.1),
                (2, 0.35, "WhatsApp Voice Notes", "PTT", "wav", 800e3, 0.8)]
MIN_FILE, MAX_FILE = 100 * KiB, 20 * MiB
DOC_EXTS = ["txt"] * 6 + ["json"] * 4 + ["html"] * 4 + ["csv"] * 3 + ["vcf"] * 2 + ["xml"]


def media_relpath(kind, folder, prefix, ext, ts, counter, rng):
    day = ymd(ts)
    if kind == 9:
        return f"media/{folder}/{rng.choice(DOC_STEMS)} {day}-{counter:04d}.{ext}"
    name = f"{prefix}-{day}-WA{counter:04d}.{ext}"
    if kind == 2:
        t = time.gmtime(ts)
        return f"media/{folder}/{t.tm_year:04d}{int(time.strftime('%W', t)):02d}/{name}"
    if kind in (1, 3) and rng.random() < 0.3:
        return f"media/{folder}/Sent/{name}"
    return f"media/{folder}/{name}"


def media_plan(seed: int, media_bytes: int) -> list[tuple]:
    """List of (kind, relpath, size, mtime): exactly media_bytes in total (last file absorbs)."""
    rng = random.Random(f"{seed}:media-plan")
    plan = []
    halves = [(media_bytes // 2, INCOMPRESSIBLE), (media_bytes - media_bytes // 2, COMPRESSIBLE)]
    for half_bytes, cats in halves:
        left_in_half = half_bytes
        for j, (kind, share, folder, prefix, ext, median, sigma) in enumerate(cats):
            budget = left_in_half if j == len(cats) - 1 else int(half_bytes * share)
            left_in_half -= budget
            sizes = []
            while budget > 0:
                s = int(min(MAX_FILE, max(MIN_FILE, rng.lognormvariate(math.log(median), sigma))))
                if budget - s < MIN_FILE:
                    s = budget
                sizes.append(s)
                budget -= s
            counters: dict[str, int] = {}
            for i, s in enumerate(sizes):
                ts = MEDIA_START + (MEDIA_END - MEDIA_START) * i // max(1, len(sizes)) + rng.randrange(0, 86400)
                e = ext or rng.choice(DOC_EXTS)
                day = ymd(ts)
                c = counters.get(day, 0)
                counters[day] = c + 1
                plan.append((kind, media_relpath(kind, folder, prefix, e, ts, c, rng), s, ts))
    return plan


def random_body(rng, f, n):
    while n > 0:
        k = min(n, 8 * MiB)
        f.write(rng.randbytes(k))
        n -= k


def write_wav(rng, f, size):
    """16-bit mono PCM: 2-second blocks of low-level noisy "speech" or near-silence."""
    data = max(0, size - 44) & ~1
    f.write(b"RIFF" + struct.pack("<I", 36 + data) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + b"data" + struct.pack("<I", data))
    hi_speech = bytes([0x00] * 100 + [0xFF] * 100 + [0x01] * 20 + [0xFE] * 20 + [0x02, 0xFD] * 8)
    lo_quiet = bytes([0x00, 0x01, 0x02, 0x03, 0xFF, 0xFE, 0xFD, 0xFC] * 32)
    hi_quiet = bytes([0x00] * 128 + [0xFF] * 128)
    block = 64000
    while data > 0:
        k = min(data, block)
        half = k // 2
        buf = bytearray(k)
        if rng.random() < 0.4:
            buf[0::2] = rng.randbytes(half).translate(lo_quiet)
            buf[1::2] = rng.randbytes(half).translate(hi_quiet)
        else:
            buf[0::2] = rng.randbytes(half)
            buf[1::2] = rng.randbytes(half).translate(hi_speech)
        f.write(buf)
        data -= k


def write_doc(rng, f, size, ext, table):
    """Text documents in assorted formats, generated in records until `size` bytes, then cut."""
    tg = TextGen(rng, table)
    parts: list[str] = []
    n = 0
    head = {"json": "[\n", "html": "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Chat</title></head><body>\n",
            "xml": "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<messages>\n", "csv": "date,time,sender,message\n"}.get(ext, "")
    parts.append(head)
    n += len(head)
    ts = MEDIA_START + rng.randrange(0, 365 * 86400)
    day = None
    i = 0
    while n < size:
        ts += 1 + int(rng.expovariate(1 / 600))
        if ts // 86400 != day:
            day = ts // 86400
            t = time.gmtime(ts)
            dstr = f"{t.tm_mday:02d}/{t.tm_mon:02d}/{t.tm_year:04d}"
        hm = f"{ts // 3600 % 24:02d}:{ts // 60 % 60:02d}"
        who = f"{FIRST[rng.getrandbits(5)]} {LAST[rng.getrandbits(5)]}"
        msg = tg.message()
        i += 1
        if ext == "json":
            s = f'  {{"id": {i}, "date": "{dstr}", "time": "{hm}", "from": "{who}", "text": "{msg}"}},\n'
        elif ext == "html":
            s = f'<div class="msg"><span class="from">{who}</span> <span class="ts">{dstr} {hm}</span><p>{msg}</p></div>\n'
        elif ext == "xml":
            s = f'  <message id="{i}" date="{dstr}" time="{hm}"><from>{who}</from><body>{msg}</body></message>\n'
        elif ext == "csv":
            s = f'{dstr},{hm},{who},"{msg}"\n'
        elif ext == "vcf":
            p = rng.randrange(10**9, 10**10)
            s = (f"BEGIN:VCARD\nVERSION:3.0\nFN:{who}\nN:{who.split()[1]};{who.split()[0]};;;\n"
                 f"TEL;type=CELL;waid=49{p}:+49 {p}\nNOTE:{msg}\nEND:VCARD\n")
        else:
            s = f"{dstr}, {hm} - {who}: {msg}\n"
        parts.append(s)
        n += len(s)  # characters; bytes are >= this, fixed by the cut below
        if len(parts) >= 4096:
            f.write("".join(parts).encode())
            parts = []
    f.write("".join(parts).encode())
    f.truncate(size)


def write_media_file(root, seed, kind, relpath, size, mtime, table):
    path = os.path.join(root, relpath)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = random.Random(f"{seed}:file:{relpath}:{size}")
    with open(path, "wb") as f:
        if kind == 1:
            f.write(JPEG_HEAD)
            random_body(rng, f, max(0, size - len(JPEG_HEAD) - 2))
            f.write(b"\xff\xd9")
        elif kind == 3:
            f.write(MP4_HEAD + struct.pack(">I", max(8, size - len(MP4_HEAD))) + b"mdat")
            random_body(rng, f, max(0, size - len(MP4_HEAD) - 8))
        elif kind == 2:
            write_wav(rng, f, size)
        else:
            write_doc(rng, f, size, relpath.rsplit(".", 1)[1], table)
        f.truncate(size)
    os.utime(path, (mtime, mtime))


def fix_dir_mtimes(root):
    for d, dirs, _ in os.walk(root, topdown=False):
        os.utime(d, (FIXED_DIR_MTIME, FIXED_DIR_MTIME))


def make_media(outdir, seed, media_bytes, table):
    plan = media_plan(seed, media_bytes)
    t0, done = time.time(), 0
    for i, (kind, rel, size, mtime) in enumerate(plan):
        write_media_file(outdir, seed, kind, rel, size, mtime, table)
        done += size
        if (i + 1) % 200 == 0 or i + 1 == len(plan):
            log(f"media: {i + 1}/{len(plan)} files, {done / MiB:.0f} MiB, {time.time() - t0:.0f}s")
    fix_dir_mtimes(os.path.join(outdir, "media"))
    by = {}
    for kind, _, size, _ in plan:
        name = {1: "images", 2: "voice_notes", 3: "videos", 9: "documents"}[kind]
        by.setdefault(name, [0, 0])
        by[name][0] += 1
        by[name][1] += size
    return {"media_files": len(plan), "media_bytes": sum(p[2] for p in plan),
            "media_by_kind": {k: {"files": v[0], "bytes": v[1]} for k, v in by.items()}}


# --------------------------------------------------------------------------------------------
# Mutation


def mutate(outdir: str, seed_override: int | None) -> dict:
    path = os.path.join(outdir, "msgstore.db")
    con = sqlite3.connect(path, isolation_level=None)
    props = dict(con.execute("SELECT key, value FROM props"))
    seed = int(props["bench_seed"]) if seed_override is None else seed_override
    gen_no = int(props["bench_generation"]) + 1
    n_now = int(props["bench_messages"])
    media_bytes = int(props["bench_media_bytes"])
    rng = random.Random(f"{seed}:mutate:{gen_no}")
    table = build_table(build_vocab(seed))
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA cache_size=-262144")
    n_new = max(20, round(n_now * 0.01))
    max_id, max_ts = con.execute("SELECT max(id), max(timestamp) FROM messages").fetchone()
    chats, members = load_chats(con)
    last_in_chat = {cid: lm for cid, lm in con.execute("SELECT id, last_message_id FROM chats") if lm}
    base = int(props["bench_base_messages"])
    mean_gap = (END_MS - START_MS) / base
    # 20 new media files, sizes scaled like the dataset (full size at scale 1).
    f_scale = min(1.0, media_bytes / (2 * GiB))
    kinds = [1] * 12 + [3] * 2 + [2] * 4 + [9] * 2
    files = []
    ts_guess = max_ts // 1000 + int(mean_gap * n_new / 1000)
    for k, kind in enumerate(kinds):
        cat = next(c for c in INCOMPRESSIBLE + COMPRESSIBLE if c[0] == kind)
        _, _, folder, prefix, ext, median, sigma = cat
        size = int(min(MAX_FILE, max(MIN_FILE, rng.lognormvariate(math.log(median), sigma))) * f_scale)
        size = max(8 * KiB, size)
        ext = ext or rng.choice(DOC_EXTS)
        rel = media_relpath(kind, folder, prefix, ext, ts_guess, 5000 + gen_no * 20 + k, rng)
        files.append((kind, rel, size))
    gen = MessageGen(rng, TextGen(rng, table), chats, members, mid=max_id, ts=max_ts,
                     mean_gap_ms=mean_gap, last_in_chat=last_in_chat)
    msgs, reacts, refs = gen.batch(n_new, media_files=files)
    con.execute("BEGIN")
    insert_rows(con, msgs, reacts, refs)
    # Read receipts arrive for recent messages of ours.
    con.execute("UPDATE messages SET status = 13 WHERE id > ? AND from_me = 1 AND status = 5", (max_id - 5000,))
    touched = sorted({m[1] for m in msgs})
    con.executemany("UPDATE chats SET last_message_id = ? WHERE id = ?",
                    [(last_in_chat[c], c) for c in touched])
    con.executemany("UPDATE props SET value = ? WHERE key = ?",
                    [(str(gen_no), "bench_generation"), (str(n_now + n_new), "bench_messages")])
    con.execute("COMMIT")
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    os.utime(path, (gen.ts // 1000, gen.ts // 1000))
    for kind, rel, size in files:
        write_media_file(outdir, seed, kind, rel, size, gen.ts // 1000, table)
    fix_dir_mtimes(os.path.join(outdir, "media"))
    return {"generation": gen_no, "new_messages": n_new, "new_media_files": len(files),
            "new_media_bytes": sum(f[2] for f in files), "db_file_bytes": os.path.getsize(path)}


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir")
    ap.add_argument("--scale", type=float, default=1.0, help="1.0 = 1 GiB DB + 2 GiB media (default)")
    ap.add_argument("--db-bytes", type=int, help="target DB size in bytes (overrides --scale)")
    ap.add_argument("--media-bytes", type=int, help="total media bytes (overrides --scale)")
    ap.add_argument("--seed", type=int, default=None, help=f"default {DEFAULT_SEED}; --mutate reads it from the DB")
    ap.add_argument("--only", choices=("db", "media"), help="generate one part only")
    ap.add_argument("--mutate", action="store_true", help="apply the next incremental change to OUTDIR")
    a = ap.parse_args(argv)
    t0 = time.time()
    if a.mutate:
        res = mutate(a.outdir, a.seed)
        res["seconds"] = round(time.time() - t0, 2)
        print(json.dumps(res))
        return 0
    seed = DEFAULT_SEED if a.seed is None else a.seed
    db_bytes = a.db_bytes if a.db_bytes is not None else int(GiB * a.scale)
    media_bytes = a.media_bytes if a.media_bytes is not None else int(2 * GiB * a.scale)
    os.makedirs(a.outdir, exist_ok=True)
    table = build_table(build_vocab(seed))
    res: dict = {"seed": seed, "scale": a.scale}
    if a.only != "media":
        t = time.time()
        res.update(make_db(os.path.join(a.outdir, "msgstore.db"), seed, db_bytes, media_bytes, table))
        res["db_seconds"] = round(time.time() - t, 1)
    if a.only != "db":
        t = time.time()
        res.update(make_media(a.outdir, seed, media_bytes, table))
        res["media_seconds"] = round(time.time() - t, 1)
    res["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
