#!/usr/bin/python3
"""A fedline edge agent in Python, written from docs/protocol.md and docs/topics.md.

It joins a federation like the TypeScript agent does on the wire, but does not train: its
"training" is the base model plus a small seeded perturbation per value, so that a test can
check the aggregator's average exactly. It exists to prove that the documented protocol is
enough to write an agent in another language (test/python-agent.test.ts runs it).

Needs only Debian's python3-msgpack and python3-paho-mqtt (paho-mqtt 1.x API). Float32 math
uses array('f') (stores round to binary32) and struct ('e' is binary16).

Every line on stdout is one JSON object: {"t": ms, "event": ..., ...fields}.

    /usr/bin/python3 fedline_agent.py --url mqtt://127.0.0.1:1883 --federation f --agent site-a \\
        --password-file pw [--samples 40] [--seed 1] [--drop-chunk 3] [--model-public-key pub.pem]
"""

import argparse
import base64
import hashlib
import json
import math
import os
import queue
import random
import secrets
import signal
import struct
import sys
import threading
import time
import zlib
from array import array
from urllib.parse import urlparse

import msgpack
import paho.mqtt.client as mqtt

PROTOCOL_VERSION = 1
BUNDLE_MAGIC = b"FLB1"
DTYPE_OF_ENCODING = {"f32": "float32", "f16": "float16", "q8": "q8"}
Q8_BLOCK = 256  # values per q8 block; fedline sends 256 (docs/protocol.md, Update encodings)
F16_MAX = 65504.0


def now_ms():
    return int(time.time() * 1000)


def log(event, **fields):
    print(json.dumps({"t": now_ms(), "event": event, **fields}), flush=True)


class RoundAbort(Exception):
    """The round this agent works on was closed or replaced by a newer announcement."""


class Stop(BaseException):
    """SIGTERM / SIGINT: leave cleanly (offline status, DISCONNECT)."""


def align_up(n, to):
    return (n + to - 1) // to * to


# ---------------------------------------------------------------- msgpack (standard types only)

def pack(obj):
    return msgpack.packb(obj, use_bin_type=True)


def unpack(payload):
    def no_ext(code, data):
        raise ValueError(f"msgpack extension type {code} is not part of the protocol")

    return msgpack.unpackb(payload, raw=False, ext_hook=no_ext, strict_map_key=True)


# ---------------------------------------------------------------- tensor bundles

def read_bundle(data):
    """Parse a global model bundle: (header dict, [(name, shape, array('f'))])."""
    if data[:4] != BUNDLE_MAGIC:
        raise ValueError('not a fedline tensor bundle (magic "FLB1" missing)')
    (header_len,) = struct.unpack_from("<I", data, 4)
    header = unpack(data[8:8 + header_len])
    if header.get("v") != 1:
        raise ValueError(f"bundle header version {header.get('v')!r}")
    payload_start = align_up(8 + header_len, 8)
    tensors = []
    for spec in header["tensors"]:
        if spec["dtype"] != "float32":
            raise ValueError(f"global model tensor {spec['name']} is {spec['dtype']}; models are float32")
        start = payload_start + spec["offset"]
        values = array("f")
        values.frombytes(data[start:start + spec["bytes"]])
        if sys.byteorder != "little":
            values.byteswap()
        if len(values) != math.prod(spec["shape"]):
            raise ValueError(f"tensor {spec['name']}: {len(values)} values for shape {spec['shape']}")
        tensors.append((spec["name"], list(spec["shape"]), values))
    return header, tensors


def f32(x):
    """Round a Python float to the nearest binary32 (as JavaScript's Math.fround)."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


def encode_f32(values):
    raw = array("f", values)
    if sys.byteorder != "little":
        raw.byteswap()
    return raw.tobytes()


def encode_f16(values):
    # Finite values beyond the largest half saturate (struct 'e' would raise OverflowError);
    # NaN and +-Infinity stay what they are. struct rounds to nearest even.
    clamped = [math.copysign(F16_MAX, v) if math.isfinite(v) and abs(v) > F16_MAX else v for v in values]
    return struct.pack(f"<{len(clamped)}e", *clamped)


def round_half_up(y):
    """Nearest integer, ties towards +infinity (what fedline's encoder does; the docs say only "round")."""
    r = math.floor(y)
    return r + 1 if y - r >= 0.5 else r


def encode_q8(values, block=Q8_BLOCK):
    out = bytearray()
    for start in range(0, len(values), block):
        chunk = values[start:start + block]
        bad = not all(math.isfinite(v) for v in chunk)
        scale = math.nan if bad else f32(max(abs(v) for v in chunk) / 127)
        out += struct.pack("<f", scale)
        if bad or scale == 0:
            out += bytes(len(chunk))
            continue
        inv = 1 / scale
        q = [max(-127, min(127, round_half_up(v * inv))) for v in chunk]
        out += struct.pack(f"<{len(q)}b", *q)
    return bytes(out)


def encode_values(dtype, values):
    if dtype == "float32":
        return encode_f32(values)
    if dtype == "float16":
        return encode_f16(values)
    return encode_q8(values)


def build_update_bundle(tensors, meta, encoding, base=None):
    """An update bundle: tensors [(name, shape, array('f'))], values encoded as the round asks;
    with `base` ({name: array('f')}) the values are the float32 differences update - base."""
    dtype = DTYPE_OF_ENCODING[encoding]
    specs, parts, offset = [], [], 0
    for name, shape, values in tensors:
        if base is not None:
            # a - b of two binary32 values, rounded to binary32: a float32 subtraction.
            values = array("f", (a - b for a, b in zip(values, base[name])))
        raw = encode_values(dtype, values)
        spec = {"name": name, "shape": shape, "dtype": dtype, "offset": offset, "bytes": len(raw)}
        if dtype == "q8":
            spec["block"] = Q8_BLOCK
        specs.append(spec)
        parts.append((offset, raw))
        # Each tensor starts 4-byte aligned (zero padding): not in the docs, see fedline's encoder.
        offset = align_up(offset + len(raw), 4)
    header = pack({"v": 1, "tensors": specs, "meta": meta})
    payload_start = align_up(8 + len(header), 8)
    out = bytearray(payload_start + offset)
    out[0:4] = BUNDLE_MAGIC
    struct.pack_into("<I", out, 4, len(header))
    out[8:8 + len(header)] = header
    for off, raw in parts:
        out[payload_start + off:payload_start + off + len(raw)] = raw
    return bytes(out)


# ---------------------------------------------------------------- Ed25519 verification (RFC 8032, section 6)

ED_P = 2**255 - 19
ED_L = 2**252 + 27742317777372353535851937790883648493
ED_D = -121665 * pow(121666, ED_P - 2, ED_P) % ED_P
ED_SQRT_M1 = pow(2, (ED_P - 1) // 4, ED_P)
SPKI_ED25519_PREFIX = bytes.fromhex("302a300506032b6570032100")


def _ed_add(P, Q):
    A = (P[1] - P[0]) * (Q[1] - Q[0]) % ED_P
    B = (P[1] + P[0]) * (Q[1] + Q[0]) % ED_P
    C = 2 * P[3] * Q[3] * ED_D % ED_P
    D = 2 * P[2] * Q[2] % ED_P
    E, F, G, H = B - A, D - C, D + C, B + A
    return (E * F % ED_P, G * H % ED_P, F * G % ED_P, E * H % ED_P)


def _ed_mul(s, P):
    Q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            Q = _ed_add(Q, P)
        P = _ed_add(P, P)
        s >>= 1
    return Q


def _ed_equal(P, Q):
    return (P[0] * Q[2] - Q[0] * P[2]) % ED_P == 0 and (P[1] * Q[2] - Q[1] * P[2]) % ED_P == 0


def _ed_recover_x(y, sign):
    if y >= ED_P:
        return None
    x2 = (y * y - 1) * pow(ED_D * y * y + 1, ED_P - 2, ED_P) % ED_P
    if x2 == 0:
        return None if sign else 0
    x = pow(x2, (ED_P + 3) // 8, ED_P)
    if (x * x - x2) % ED_P != 0:
        x = x * ED_SQRT_M1 % ED_P
    if (x * x - x2) % ED_P != 0:
        return None
    if (x & 1) != sign:
        x = ED_P - x
    return x


def _ed_decompress(s):
    y = int.from_bytes(s, "little")
    sign = y >> 255
    y &= (1 << 255) - 1
    x = _ed_recover_x(y, sign)
    return None if x is None else (x, y, 1, x * y % ED_P)


_ED_GY = 4 * pow(5, ED_P - 2, ED_P) % ED_P
_ED_G = (_ed_recover_x(_ED_GY, 0), _ED_GY, 1, _ed_recover_x(_ED_GY, 0) * _ED_GY % ED_P)


def ed25519_verify(public, message, signature):
    if len(public) != 32 or len(signature) != 64:
        return False
    A = _ed_decompress(public)
    R = _ed_decompress(signature[:32])
    s = int.from_bytes(signature[32:], "little")
    if A is None or R is None or s >= ED_L:
        return False
    h = int.from_bytes(hashlib.sha512(signature[:32] + public + message).digest(), "little") % ED_L
    return _ed_equal(_ed_mul(s, _ED_G), _ed_add(R, _ed_mul(h, A)))


def load_public_key(path):
    """The raw 32-byte key of an Ed25519 SPKI PEM file (what `fedline keygen` writes)."""
    with open(path, encoding="ascii") as f:
        body = "".join(line.strip() for line in f if not line.startswith("-----"))
    der = base64.b64decode(body)
    if len(der) != 44 or not der.startswith(SPKI_ED25519_PREFIX):
        raise ValueError(f"{path} is not an Ed25519 public key (SPKI PEM)")
    return der[12:]


def model_signature_ok(public_key, version, sha256, signature_hex):
    if not isinstance(signature_hex, str) or len(signature_hex) != 128:
        return False
    text = f"fedline-model-v1:{version}:{sha256}".encode("utf-8")
    return ed25519_verify(public_key, text, bytes.fromhex(signature_hex))


# ---------------------------------------------------------------- the agent

class Agent:
    def __init__(self, args):
        self.args = args
        self.agent = args.agent
        self.federation = args.federation
        self.root = args.topic_root or f"fl/{args.federation}"
        self.public_key = load_public_key(args.model_public_key) if args.model_public_key else None
        self.inbox = queue.Queue()  # (topic, payload) from paho's network thread
        self.latest = None  # the newest round announcement
        self.done_rounds = set()  # (runId, round): round numbers start at 1 again in a new run
        self.status = {"v": PROTOCOL_VERSION, "agent": self.agent, "state": "starting", "round": None, "progress": None,
                       "detail": None, "backend": "python", "samples": {"train": args.samples, "test": 0}, "ts": now_ms()}
        self.pubacks = set()
        self.puback_cond = threading.Condition()
        self.connected = threading.Event()
        self.reconnected = False
        self.stopping = False
        self.shutting_down = False
        url = urlparse(args.url)
        if url.scheme != "mqtt":
            raise SystemExit(f"only mqtt:// URLs are supported, not {args.url}")
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 1883
        self.client = mqtt.Client(client_id=f"fedline-py-{self.agent}", clean_session=True, protocol=mqtt.MQTTv311)
        self.client.username_pw_set(args.username or self.agent, read_password(args))
        offline = dict(self.status, state="offline", backend=None, samples=None)
        self.client.will_set(self.t_status(), json.dumps(offline), qos=1, retain=True)
        self.client.max_inflight_messages_set(max(20, args.max_inflight))
        self.client.reconnect_delay_set(0.2, 2)
        self.client.on_connect = self.on_connect
        self.client.on_message = lambda c, u, m: self.inbox.put((m.topic, m.payload))
        self.client.on_publish = self.on_publish

    # topics (docs/protocol.md, Topics)
    def t_round(self):
        return f"{self.root}/round"

    def t_status(self):
        return f"{self.root}/agent/{self.agent}/status"

    def t_update(self, rnd):
        return f"{self.root}/round/{rnd}/update/{self.agent}"

    def t_acks(self):
        return f"{self.root}/round/+/ack/{self.agent}"

    def t_model(self, version):
        return f"{self.root}/model/{version}/+"

    # ---- MQTT plumbing

    def on_connect(self, client, userdata, flags, rc):
        if rc != 0:
            log("connect-refused", rc=rc, reason=mqtt.connack_string(rc))
            return
        client.subscribe([(self.t_round(), 1), (self.t_acks(), 1)])
        # After a reconnect the retained status may be our last will: the main thread says we are back.
        self.reconnected = self.connected.is_set()
        self.connected.set()
        log("connected", host=self.host, port=self.port, reconnect=self.reconnected)

    def on_publish(self, client, userdata, mid):
        with self.puback_cond:
            self.pubacks.add(mid)
            self.puback_cond.notify_all()

    def publish(self, topic, payload, retain=False):
        """QoS 1 publish; returns the message id to wait on with wait_puback."""
        return self.client.publish(topic, payload, qos=1, retain=retain).mid

    def wait_puback(self, mid, timeout=30.0):
        deadline = time.monotonic() + timeout
        with self.puback_cond:
            while mid not in self.pubacks:
                self.check_stop()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no PUBACK for message {mid} within {timeout} s")
                self.puback_cond.wait(min(left, 0.2))
            self.pubacks.discard(mid)

    def check_stop(self):
        # SIGTERM only sets a flag (raising inside paho's locks could leave one held); the main
        # thread leaves at its next wait.
        if self.stopping and not self.shutting_down:
            raise Stop()

    def set_status(self, **patch):
        prev = self.status["state"]
        self.status.update(patch, ts=now_ms())
        self.wait_puback(self.publish(self.t_status(), json.dumps(self.status), retain=True))
        if self.status["state"] != prev:
            event = {"v": PROTOCOL_VERSION, "type": "agent-state", "federation": self.federation, "ts": now_ms(), "agent": self.agent,
                     **{k: self.status[k] for k in ("state", "round", "progress", "detail")}}
            self.wait_puback(self.publish(f"{self.root}/events/agent-state/{self.agent}", json.dumps(event)))

    def next_message(self, timeout):
        """One inbound message (topic, payload), or None after `timeout` s. Round announcements are
        taken here, whatever the caller waits for, so that work in progress sees a newer one."""
        self.check_stop()
        if self.reconnected:
            self.reconnected = False
            self.set_status()
        try:
            topic, payload = self.inbox.get(timeout=min(timeout, 0.2)) if timeout > 0 else self.inbox.get_nowait()
        except queue.Empty:
            return None
        if topic == self.t_round():
            self.take_announcement(payload)
            return None
        return topic, payload

    def take_announcement(self, payload):
        if not payload:
            return
        try:
            ann = unpack(payload)
            if ann.get("v") != PROTOCOL_VERSION or ann.get("type") != "round":
                raise ValueError(f"not a version-1 round announcement: v={ann.get('v')!r} type={ann.get('type')!r}")
            if ann["federation"] != self.federation:
                raise ValueError(f"announcement for federation {ann['federation']}")
        except Exception as err:  # a bad message is logged and dropped, never fatal
            log("rejected", topic=self.t_round(), reason=str(err))
            return
        # Rounds belong to a federation run (runId); an announcement of another run issued before
        # the newest one followed so far is an earlier run's stale retained message: ignored.
        newest = self.latest
        if newest is not None and ann["runId"] != newest["runId"] and ann["issuedAt"] < newest["issuedAt"]:
            log("earlier-run-ignored", runId=ann["runId"], round=ann["round"], state=ann["state"])
            return
        self.latest = ann

    def check_current(self, run_id, rnd):
        ann = self.latest
        if ann is None or ann["runId"] != run_id or ann["round"] != rnd or ann["state"] != "open":
            raise RoundAbort(f"round {rnd} is no longer open")

    # ---- main loop

    def run(self):
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(15):
            raise SystemExit(f"no CONNACK from {self.args.url}")
        self.set_status(state="idle", detail="waiting for a round")
        handled = None
        while True:
            self.next_message(0.5)
            ann = self.latest
            if ann is None or ann is handled:
                continue
            handled = ann
            self.on_round(ann)

    def on_round(self, ann):
        rnd = ann["round"]
        if ann["state"] == "complete":
            log("federation-complete", finalVersion=ann["base"]["version"])
            self.set_status(state="idle", round=None, progress=None, detail=f"federation complete; final model version {ann['base']['version']}")
            return
        if ann["state"] != "open" or (ann["runId"], rnd) in self.done_rounds:
            return
        if self.agent not in ann["selected"]:
            log("not-selected", round=rnd)
            return
        log("round", round=rnd, kind=ann["kind"], encoding=ann["encoding"], delta=ann.get("delta", False), baseVersion=ann["base"]["version"])
        try:
            self.work(ann)
            self.done_rounds.add((ann["runId"], rnd))
        except RoundAbort as err:
            log("round-aborted", round=rnd, reason=str(err))
            self.set_status(state="idle", round=rnd, progress=None, detail=f"stopped: {err}")
        except (ValueError, KeyError, TimeoutError) as err:
            log("round-failed", round=rnd, reason=str(err))
            self.set_status(state="error", round=rnd, progress=None, detail=str(err))

    def work(self, ann):
        rnd, ref = ann["round"], ann["base"]
        # 1. the base model (signature first, when this agent has the aggregator's public key)
        if self.public_key is not None:
            if not model_signature_ok(self.public_key, ref["version"], ref["sha256"], ref.get("signature")):
                raise ValueError(f"FL_MODEL_SIGNATURE: model version {ref['version']} is unsigned or its signature does not verify")
            log("signature-verified", version=ref["version"])
        self.set_status(state="downloading", round=rnd, progress=0, detail=f"model version {ref['version']}")
        bundle = self.download_model(ann["runId"], rnd, ref)
        header, tensors = read_bundle(bundle)
        meta = header["meta"]
        if meta.get("version") != ref["version"]:
            raise ValueError(f"bundle says version {meta.get('version')}, announced {ref['version']}")
        # 2. evaluate the base and report it (no test data here: an empty evaluation)
        self.set_status(state="evaluating", round=rnd, progress=None, detail=f"global model version {ref['version']}")
        metrics = empty_metrics(len(ann["classes"]))
        report = {"v": PROTOCOL_VERSION, "type": "eval", "round": rnd, "agent": self.agent, "baseVersion": ref["version"],
                  "metrics": metrics, "downloadedBytes": len(bundle)}
        self.wait_puback(self.publish(self.t_update(rnd), pack(report)))
        log("eval-sent", round=rnd)
        if ann["kind"] != "train":
            self.set_status(state="idle", round=rnd, progress=None, detail=f"evaluated model version {ref['version']}")
            return
        # 3. "train": base + seeded perturbation of the federated tensors
        self.set_status(state="training", round=rnd, progress=0, detail="seeded perturbation (no real training)")
        started = time.monotonic()
        federated = federated_names(ann["task"]["federated"], [t[0] for t in tensors], meta.get("headTensors", []))
        rng = random.Random(self.args.seed * 1_000_003 + rnd)
        trained = [(name, shape, array("f", (v + (rng.random() - 0.5) * self.args.scale for v in values)))
                   for name, shape, values in tensors if name in federated]
        delta = bool(ann.get("delta", False))
        update_meta = {"kind": "update", "agent": self.agent, "round": rnd, "baseVersion": ref["version"], "sampleCount": self.args.samples,
                       "epochs": ann["task"]["epochs"], "metricsBefore": metrics, "metricsAfter": None,
                       "trainMs": int((time.monotonic() - started) * 1000), "backend": "python", "delta": delta}
        base = {name: values for name, _, values in tensors} if delta else None
        update = build_update_bundle(trained, update_meta, ann["encoding"], base)
        log("update-built", round=rnd, bytes=len(update), encoding=ann["encoding"], delta=delta, tensors=len(trained),
            values=sum(len(t[2]) for t in trained))
        # 4. send it
        self.set_status(state="uploading", round=rnd, progress=0, detail=f"{len(update)} bytes ({ann['encoding']}{', delta' if delta else ''})")
        ack = self.upload(ann, update)
        if ack["status"] == "accepted":
            self.set_status(state="idle", round=rnd, progress=None, detail=f"update for round {rnd} accepted")
        else:
            self.set_status(state="idle", round=rnd, progress=None, detail=f"update rejected: {ack.get('reason')}")

    def download_model(self, run_id, rnd, ref):
        """The base model's retained chunks, each CRC-checked, then the whole bundle's SHA-256."""
        started = time.monotonic()
        total, size, chunk_bytes = ref["chunks"], ref["bytes"], ref["chunkBytes"]
        have = {}
        prefix = f"{self.root}/model/{ref['version']}/"
        self.client.subscribe(self.t_model(ref["version"]), qos=1)
        last_new = time.monotonic()
        try:
            while len(have) < total:
                self.check_current(run_id, rnd)
                if time.monotonic() - last_new > self.args.stall_s:
                    # Ask the broker for the retained chunks again; only missing ones are kept.
                    log("download-stalled", have=len(have), total=total)
                    self.client.unsubscribe(self.t_model(ref["version"]))
                    self.client.subscribe(self.t_model(ref["version"]), qos=1)
                    last_new = time.monotonic()
                m = self.next_message(0.2)
                if m is None or not m[0].startswith(prefix) or not m[1]:
                    continue  # not a chunk of this model, or an empty (cleared) retained payload
                try:
                    chunk = unpack(m[1])
                    seq = check_model_chunk(chunk, m[0][len(prefix):], ref)
                except (ValueError, KeyError, TypeError) as err:
                    log("rejected", topic=m[0], reason=str(err))
                    continue
                if seq not in have:
                    have[seq] = chunk["data"]
                    last_new = time.monotonic()
        finally:
            self.client.unsubscribe(self.t_model(ref["version"]))
        bundle = b"".join(have[i] for i in range(total))
        if len(bundle) != size or hashlib.sha256(bundle).hexdigest() != ref["sha256"]:
            raise ValueError(f"FL_BUNDLE_SHA: model version {ref['version']} does not match the announced SHA-256")
        log("model-downloaded", round=rnd, version=ref["version"], bytes=size, chunks=total, chunkBytes=chunk_bytes,
            ms=int((time.monotonic() - started) * 1000))
        return bundle

    def upload(self, ann, update):
        return Upload(self, ann, update).run()

    def shutdown(self):
        """A clean DISCONNECT suppresses the last will (MQTT 3.1.1 section 3.14.4): say offline ourselves."""
        self.shutting_down = True
        if self.connected.is_set():
            try:
                offline = dict(self.status, state="offline", round=None, progress=None, detail=None, ts=now_ms())
                self.wait_puback(self.publish(self.t_status(), json.dumps(offline), retain=True), timeout=2)
            except TimeoutError:
                pass
        self.client.disconnect()
        self.client.loop_stop()
        log("stopped")


class Upload:
    """One update upload: chunks (flow-control credit, a PUBACK window), then update-done until a verdict.
    Acks name the upload; those about another one are ignored."""

    def __init__(self, agent, ann, update):
        self.agent, self.update = agent, update
        self.run_id, self.round, self.chunk_bytes = ann["runId"], ann["round"], ann["chunkBytes"]
        self.total = max(1, math.ceil(len(update) / self.chunk_bytes))
        self.id = secrets.token_hex(8)
        self.sha256 = hashlib.sha256(update).hexdigest()
        self.topic = agent.t_update(self.round)
        self.ack_topic = f"{agent.root}/round/{self.round}/ack/{agent.agent}"
        self.ack_timeout_s = agent.args.ack_timeout_ms / 1000
        self.announced_window = self.window = ann.get("windowChunks", 0)
        self.stored, self.credit_lost = 0, False
        self.verdict, self.incomplete = None, []
        self.sent_bytes = self.resent = self.progress_acks = self.credit_waits = self.max_ahead = 0

    def run(self):
        started = time.monotonic()
        self.send_pass(range(self.total), first=True)
        while self.verdict is None:
            self.agent.check_current(self.run_id, self.round)
            done = {"v": PROTOCOL_VERSION, "type": "update-done", "round": self.round, "agent": self.agent.agent, "upload": self.id,
                    "total": self.total, "bundleBytes": len(self.update), "sha256": self.sha256}
            self.agent.wait_puback(self.agent.publish(self.topic, pack(done)))
            deadline = time.monotonic() + self.ack_timeout_s
            while self.verdict is None and not self.incomplete and time.monotonic() < deadline:
                self.take_ack(0.1)
            if self.verdict is not None:
                break
            if not self.incomplete:
                log("no-verdict", round=self.round, timeoutMs=self.agent.args.ack_timeout_ms)
                continue
            # Resend exactly what the aggregator lists as missing, then ask again.
            missing = sorted({s for s in self.incomplete[0].get("missing", []) if 0 <= s < self.total})
            self.incomplete.clear()
            log("ack-incomplete", round=self.round, missing=missing)
            if missing:
                self.resent += len(missing)
                self.send_pass(missing, first=False)
                log("chunks-resent", round=self.round, seqs=missing)
        fields = {"round": self.round, "upload": self.id, "sha256": self.sha256, "bytes": len(self.update), "chunks": self.total,
                  "sentBytes": self.sent_bytes, "resentChunks": self.resent, "ms": int((time.monotonic() - started) * 1000),
                  "window": self.announced_window, "progressAcks": self.progress_acks, "creditWaits": self.credit_waits, "maxAhead": self.max_ahead}
        if self.verdict["status"] == "accepted":
            log("update-accepted", **fields)
        else:
            log("update-rejected", code=self.verdict.get("code"), reason=self.verdict.get("reason"), **fields)
        return self.verdict

    def send_pass(self, seqs, first):
        inflight = []
        for index, seq in enumerate(seqs):
            self.agent.check_current(self.run_id, self.round)
            while not self.agent.inbox.empty():
                self.take_ack(0)
            if self.verdict is not None:
                return  # a verdict while sending (e.g. the header was refused): stop
            if first:
                self.wait_credit(index)
                self.max_ahead = max(self.max_ahead, index + 1 - self.stored)
            data = self.update[seq * self.chunk_bytes:(seq + 1) * self.chunk_bytes]
            if first and seq in self.agent.args.drop_chunk:
                log("chunk-dropped", round=self.round, seq=seq)
                continue
            msg = {"v": PROTOCOL_VERSION, "type": "update-chunk", "round": self.round, "agent": self.agent.agent, "upload": self.id, "seq": seq,
                   "total": self.total, "bundleBytes": len(self.update), "chunkBytes": self.chunk_bytes, "crc32": zlib.crc32(data), "data": data}
            inflight.append(self.agent.publish(self.topic, pack(msg)))
            self.sent_bytes += len(data)
            if len(inflight) >= self.agent.args.max_inflight:
                self.agent.wait_puback(inflight.pop(0))
        for mid in inflight:
            self.agent.wait_puback(mid)

    def needs_credit(self, index):
        return self.window > 0 and not self.credit_lost and index - self.stored >= self.window and self.verdict is None

    def wait_credit(self, index):
        """Flow control: at most `window` chunks beyond those the aggregator reported stored. No
        progress ack within the ack timeout: send on (a lost ack must not stall the upload)."""
        if self.needs_credit(index):
            self.credit_waits += 1
        deadline = time.monotonic() + self.ack_timeout_s
        while self.needs_credit(index):
            if time.monotonic() > deadline:
                log("credit-timeout", round=self.round, index=index, stored=self.stored, window=self.window)
                self.credit_lost = True
                return
            self.take_ack(0.05)

    def take_ack(self, timeout):
        m = self.agent.next_message(timeout)
        if m is None or m[0] != self.ack_topic:
            return
        try:
            ack = unpack(m[1])
            if ack.get("v") != PROTOCOL_VERSION or ack.get("type") != "ack" or ack["round"] != self.round or ack["agent"] != self.agent.agent:
                raise ValueError("not an ack for this round and agent")
        except (ValueError, KeyError) as err:
            log("rejected", topic=m[0], reason=str(err))
            return
        if ack.get("upload") is not None and ack["upload"] != self.id:
            return  # about an earlier upload
        if ack["status"] == "progress":
            self.progress_acks += 1
            self.stored = max(self.stored, ack.get("stored", 0))
            if self.window > 0 and ack.get("window", 0) > 0:
                self.window = ack["window"]
            self.credit_lost = False
        elif ack["status"] in ("accepted", "rejected"):
            self.verdict = self.verdict or ack
        else:
            self.incomplete.append(ack)


def check_model_chunk(msg, seq_level, ref):
    """Check one model chunk against the announced model; returns its seq."""
    if msg.get("v") != PROTOCOL_VERSION or msg.get("type") != "model-chunk":
        raise ValueError(f"not a version-1 model chunk: v={msg.get('v')!r} type={msg.get('type')!r}")
    seq = msg["seq"]
    if str(seq) != seq_level or msg["version"] != ref["version"]:
        raise ValueError(f"FL_MSG_TOPIC: chunk {msg['version']}/{seq} on level {seq_level}")
    if msg["sha256"] != ref["sha256"]:
        raise ValueError(f"FL_CHUNK_MISMATCH: chunk {seq} belongs to another bundle")
    if (msg["total"], msg["bundleBytes"], msg["chunkBytes"]) != (ref["chunks"], ref["bytes"], ref["chunkBytes"]):
        raise ValueError(f"FL_CHUNK_MISMATCH: chunk {seq} geometry differs from the announcement")
    if not 0 <= seq < ref["chunks"]:
        raise ValueError(f"FL_CHUNK_MISMATCH: chunk seq {seq} outside 0..{ref['chunks'] - 1}")
    data = msg["data"]
    expected = min(ref["chunkBytes"], ref["bytes"] - seq * ref["chunkBytes"])
    if not isinstance(data, bytes) or len(data) != expected:
        raise ValueError(f"FL_CHUNK_MISMATCH: chunk {seq} carries {len(data)} bytes, expected {expected}")
    if zlib.crc32(data) != msg["crc32"]:
        raise ValueError(f"FL_CHUNK_CRC: chunk {seq} fails its CRC32")
    return seq


def federated_names(federated, all_names, head_names):
    if federated == "all":
        return list(all_names)
    wanted = set(head_names if federated == "head" else federated)
    return [n for n in all_names if n in wanted]


def empty_metrics(classes):
    """Evaluation metrics of an agent without a test split (the schema needs one row per class)."""
    return {"samples": 0, "loss": None, "accuracy": 0.0, "balancedAccuracy": 0.0, "confusion": [[0] * classes for _ in range(classes)],
            "precision": [None] * classes, "recall": [None] * classes}


def read_password(args):
    if args.password_file:
        with open(args.password_file, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get("FEDLINE_MQTT_PASSWORD")


def parse_args(argv):
    p = argparse.ArgumentParser(description="A fedline edge agent in Python (no real training: base + seeded perturbation).")
    p.add_argument("--url", required=True, help="mqtt://host:port")
    p.add_argument("--federation", required=True)
    p.add_argument("--topic-root", help="default fl/<federation>")
    p.add_argument("--agent", required=True, help="agent id (also the MQTT user name unless --username)")
    p.add_argument("--username")
    p.add_argument("--password-file", help="file holding the MQTT password (else $FEDLINE_MQTT_PASSWORD)")
    p.add_argument("--samples", type=int, default=40, help="sampleCount reported in updates (the FedAvg weight)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--scale", type=float, default=0.01, help="perturbation: uniform in [-scale/2, scale/2) per value")
    p.add_argument("--drop-chunk", type=int, action="append", default=[], help="leave this chunk out of the first pass (repeatable)")
    p.add_argument("--max-inflight", type=int, default=8, help="QoS 1 chunk publishes awaiting PUBACK")
    p.add_argument("--ack-timeout-ms", type=int, default=10_000)
    p.add_argument("--stall-s", type=float, default=10.0, help="resubscribe to the model chunks after this long without one")
    p.add_argument("--model-public-key", help="the aggregator's Ed25519 public key (PEM): refuse unsigned or badly signed models")
    return p.parse_args(argv)


def main(argv):
    agent = Agent(parse_args(argv))

    def stop(signum, frame):
        agent.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        agent.run()
    except Stop:
        agent.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
