#!/usr/bin/env python3
"""tests/e2e/run.py: replay one end-to-end case against the sandbox.

    run.py --bin-dir BUILD --source-dir SRC CASE.json [--keep]

A case is a data file (tests/e2e/cases/*.json, format in README.md): the
pairs it runs (opayo-xero by default, opayo-syspro, paytrace-sagex3, and the
shop's status receiver), the sandbox settings, the paybridge settings, and a
list of steps, each one action (play an Opayo order or a PayTrace sale, send a
raw webhook, inject a fault, refund, open a chargeback, kill paybridge) or one
expectation (what Xero, SYSPRO, Sage X3 or the shop holds, what the
dead-letter queue holds). This program owns nothing but the case's temporary
directory and the processes it starts there:

  1. paybridge-sandbox on ephemeral ports, with the emulators of the pairs;
  2. DIR/paybridge.yaml (secrets as env:NAME, a random admin key) and a copy
     of each pair's SRC/flows/*.yaml in DIR/flows, so a case may edit it;
     `paybridge check -c` must pass with no diagnostics at all;
  3. `paybridge serve` on port 0, then always on that same port after a
     restart, because the gateways' notification URLs point at it;
  4. the steps, in order. A failed expectation is reported and the case goes
     on (later steps often explain the first failure); a broken precondition
     (a process died, a port never opened) stops the case at once;
  5. SIGTERM to paybridge (which must exit 0: a crash on shutdown is a bug)
     and to the sandbox. On failure the tail of paybridge's JSON log follows.

Exit status: 0 when every expectation held, 1 otherwise, 2 for a malformed
case or command line.

Rules this runner keeps:
  - Strict by default: an unexpected notification failure, a duplicate Xero
    reference, an unexpected dead letter or a paybridge crash fails the case
    even when no step asked about it. Cases relax a check only by saying so.
  - Money is compared exactly: Xero's JSON numbers are parsed as Decimal and
    turned into integer minor units with the currency's exponent.
  - Standard library only, so it runs wherever CMake and python3 do.

Rejected designs:
  - Python test functions per case: a case is then code, and reviewing what
    is sent and what is expected means reading control flow. Data files keep
    every case in one readable shape (curl's tests/data, HOUSE-STYLE.md).
  - Verifying Xero through paybridge's own xref: a bug that writes the xref
    but not the document would pass. Everything about Xero is read back from
    the Xero sandbox's real API and its /_sandbox/stats counters; SYSPRO, Sage
    X3 and the shop from their emulators' records and counters.
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal

# ---- small helpers ------------------------------------------------------------------------------

CURRENCY_EXPONENT = {"JPY": 0, "KRW": 0, "BHD": 3, "KWD": 3, "JOD": 3, "OMR": 3, "TND": 3, "CLF": 4}
CARDS = {"ok": "4929000000006", "declined": "4929602110085639"}
CARD_OUTCOME = {"ok": "Ok", "declined": "NotAuthed"}
PAYTRACE_CARDS = {"ok": "4111111111111111", "declined": "4012888888881881"}

# What each pair of a case starts and writes: the emulators, the flow template
# copied into the case's directory, the gateway connection (source) and the
# ERP connection (target).
PAIRS = {
    "opayo-xero": {"systems": ["opayo", "xero"], "flow": "opayo-xero.yaml", "source": "opayo-shop",
                   "target": "xero-demo"},
    "opayo-syspro": {"systems": ["opayo", "syspro"], "flow": "opayo-syspro.yaml", "source": "opayo-shop",
                     "target": "syspro-erp"},
    "paytrace-sagex3": {"systems": ["paytrace", "sagex3"], "flow": "paytrace-sagex3.yaml",
                        "source": "paytrace-shop", "target": "sagex3-erp"},
}
SYSPRO_OPERATOR, SYSPRO_COMPANY, SYSPRO_BANK = "ADMIN", "EDU1", "BANK1"
X3_USER, X3_POOL, X3_SITE = "admin", "SEED", "US011"
LOG_TAIL_LINES = 60


class CaseError(Exception):
    """The case file itself is wrong (exit 2)."""


class Abort(Exception):
    """A precondition broke: the rest of the case cannot mean anything."""


def exponent(currency):
    return CURRENCY_EXPONENT.get(currency, 2)


def to_minor(amount, currency):
    """A Xero decimal (Decimal, int or str) as an int of minor units, or None if not exact."""
    if amount is None:
        return None
    d = Decimal(str(amount)) * (Decimal(10) ** exponent(currency))
    return int(d) if d == d.to_integral_value() else None


def now_iso():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def luhn_ok(digits):
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def lettered_guid():
    """An upper-case GUID whose every group holds a letter, so no dash-joined
    digit run in it can look like a card number to anyone."""
    while True:
        g = str(uuid.uuid4()).upper()
        if all(re.search("[A-F]", part) for part in g.split("-")):
            return g


def http(method, url, body=None, headers=None, timeout=15.0):
    """One HTTP call. Returns (status, headers dict lower-case, body bytes);
    status 0 when the server could not be reached (body says why)."""
    data = None
    hdrs = dict(headers or {})
    if body is not None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        try:
            payload = e.read()
        except Exception:  # the server may have closed mid-body
            payload = b""
        return e.code, {k.lower(): v for k, v in (e.headers or {}).items()}, payload
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
        return 0, {}, str(e).encode()


def as_json(payload, decimals=False):
    try:
        if decimals:
            return json.loads(payload, parse_float=Decimal)
        return json.loads(payload)
    except (ValueError, TypeError):
        return None


def short(payload, n=300):
    s = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
    return s if len(s) <= n else s[:n] + "..."


def yaml_dump(value, indent=0):
    """Block-style YAML for dicts, lists and scalars. Strings are written as
    JSON strings, which YAML reads as double-quoted scalars."""
    pad = "  " * indent
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                out.append("%s%s:" % (pad, k))
                out.append(yaml_dump(v, indent + 1))
            else:
                out.append("%s%s: %s" % (pad, k, yaml_scalar(v)))
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)) and v:
                inner = yaml_dump(v, indent + 1).lstrip()
                out.append("%s- %s" % (pad, inner))
            else:
                out.append("%s- %s" % (pad, yaml_scalar(v)))
    return "\n".join(out)


def yaml_scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, dict):
        return "{}"
    if isinstance(v, list):
        return "[]"
    return json.dumps(str(v))


def set_path(obj, path, value):
    keys = path.split(".")
    for k in keys[:-1]:
        obj = obj.setdefault(k, {})
    obj[keys[-1]] = value


def del_path(obj, path):
    keys = path.split(".")
    for k in keys[:-1]:
        obj = obj.get(k, {})
    obj.pop(keys[-1], None)


def parse_metrics(text):
    """Prometheus text -> list of (name, {label: value}, float)."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([A-Za-z_:][A-Za-z0-9_:]*)(\{([^}]*)\})?\s+(\S+)$', line)
        if not m:
            continue
        labels = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="([^"]*)"', m.group(3) or ""))
        try:
            out.append((m.group(1), labels, float(m.group(4))))
        except ValueError:
            pass
    return out


def metric_sum(samples, name, labels=None):
    total, found = 0.0, False
    for n, l, v in samples:
        if n == name and all(l.get(k) == str(val) for k, val in (labels or {}).items()):
            total += v
            found = True
    return total if found else None


def set_parent_death_signal():
    """Child side of Popen: die with the runner, even if ctest SIGKILLs it."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


# ---- processes --------------------------------------------------------------------------------------

class Sandbox:
    """paybridge-sandbox with the case's emulators (opayo, xero, syspro, sagex3,
    paytrace, shop: those of its pairs) on ephemeral ports."""

    def __init__(self, run):
        self.run = run
        self.proc = None
        self.ports = {}

    def start(self, settings, systems):
        d = self.run.dir
        conf = os.path.join(d, "sandbox.json")
        with open(conf, "w") as f:
            json.dump(settings, f, indent=2)
        ports_file = os.path.join(d, "ports.json")
        self.log = open(os.path.join(d, "sandbox.log"), "wb")
        port_flags = []
        for system in systems:
            port_flags += ["--%s-port" % system, "0"]
        self.proc = subprocess.Popen(
            [os.path.join(self.run.bin_dir, "paybridge-sandbox")] + port_flags +
            ["--only", ",".join(systems), "--ports-file", ports_file, "--config", conf],
            stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=set_parent_death_signal)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise Abort("paybridge-sandbox exited with %s before listening:\n%s"
                            % (self.proc.returncode, self.run.tail(os.path.join(d, "sandbox.log"))))
            if os.path.exists(ports_file):
                with open(ports_file) as f:
                    line = as_json(f.read())
                if line and "ports" in line:
                    self.ports = line["ports"]
                    return
            time.sleep(0.05)
        raise Abort("paybridge-sandbox wrote no %s within 15 s" % ports_file)

    def url(self, system, path):
        return "http://127.0.0.1:%d%s" % (self.ports[system], path)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc:
            self.log.close()


class Paybridge:
    """The paybridge daemon: one Popen per start, one log file per start."""

    def __init__(self, run):
        self.run = run
        self.proc = None
        self.port = 0
        self.starts = 0
        self.logs = []

    def start(self):
        d = self.run.dir
        port_file = os.path.join(d, "port")
        if os.path.exists(port_file):
            os.unlink(port_file)
        self.run.write_config(self.port)
        self.starts += 1
        log_path = os.path.join(d, "paybridge.%d.log" % self.starts)
        self.logs.append(log_path)
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [os.path.join(self.run.bin_dir, "paybridge"), "serve", "-c", self.run.config_path,
             "--port-file", port_file],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.run.env, cwd=d,
            preexec_fn=set_parent_death_signal)
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise Abort("paybridge serve exited with status %s while starting:\n%s"
                            % (self.proc.returncode, self.run.tail(log_path)))
            if os.path.exists(port_file):
                with open(port_file) as f:
                    text = f.read().strip()
                if text.isdigit():
                    port = int(text)
                    if self.port and port != self.port:
                        raise Abort("paybridge came back on port %d, not %d" % (port, self.port))
                    self.port = port
                    break
            time.sleep(0.05)
        else:
            raise Abort("paybridge wrote no port file within 20 s:\n%s" % self.run.tail(log_path))
        while time.time() < deadline:
            status, _, _ = http("GET", self.url("/readyz"), timeout=2)
            if status == 200:
                return
            time.sleep(0.05)
        raise Abort("GET /readyz never answered 200 within 20 s")

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            rc = self.proc.returncode
            why = ("killed by signal %d" % -rc) if rc < 0 else ("exit status %d" % rc)
            raise Abort("paybridge died unexpectedly (%s):\n%s" % (why, self.run.tail(self.logs[-1])))

    def stop(self, expect_clean=True):
        """SIGTERM; returns an error text when the daemon did not exit 0 in 15 s."""
        if not self.proc:
            return None
        problem = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                problem = "paybridge did not exit within 15 s of SIGTERM (killed)"
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        if problem is None and rc != 0 and expect_clean:
            problem = ("paybridge exited with %s after SIGTERM (expected 0)"
                       % (("signal %d" % -rc) if rc < 0 else rc))
        self.proc = None
        self.log.close()
        return problem

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        self.log.close()


class SftpServer:
    """An OpenSSH sftp server for the case ("sftp": true): Debian's sshd run as
    the current user (root or not) with `-D -e -f DIR/sshd/sshd_config` on a
    free loopback port, its own ed25519 host key, and an authorized_keys
    holding a generated client key. It serves the whole file system read-write
    as that user; the case's reports go into DIR/sftp ({sftp_dir}). Nothing
    outside DIR is written, except that as root sshd needs its privilege
    separation directory (/run/sshd on Debian), which is created when missing
    as the distribution's service unit does. `UsePAM no`, unless sshd refuses
    the user because its password is locked (then the same server with PAM,
    which judges the account and lets a key in). OpenSSH's own sftp client
    must list the directory before paybridge is judged; a server that cannot
    start or serve fails the case with sshd's own words: never a silent skip."""

    def __init__(self, run):
        self.run = run
        self.proc = None
        self.port = 0
        self.home = os.path.join(run.dir, "sshd")
        self.served = os.path.join(run.dir, "sftp")
        self.log_path = os.path.join(run.dir, "sshd.log")
        self.user = pwd.getpwuid(os.getuid()).pw_name

    @staticmethod
    def find(exe):
        path = os.environ.get("PATH", "") + ":/usr/sbin:/usr/local/sbin:/sbin"
        found = shutil.which(exe, path=path)
        if not found:
            raise Abort("%s is not installed: the sftp cases need openssh-server and openssh-client "
                        "(scripts/install-deps installs them; Debian: apt-get install openssh-server openssh-client)"
                        % exe)
        return os.path.abspath(found)  # sshd re-executes itself: it wants an absolute path

    def keygen(self, name):
        path = os.path.join(self.home, name)
        p = subprocess.run([self.find("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "pb-e2e-" + name,
                            "-f", path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if p.returncode != 0:
            raise Abort("ssh-keygen -t ed25519 -f %s failed (rc %d): %s" % (path, p.returncode, p.stdout.decode()))
        with open(path + ".pub") as f:
            kind, blob = f.read().split()[:2]
        return path, kind + " " + blob

    def write_config(self, use_pam):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        conf = os.path.join(self.home, "sshd_config")
        with open(conf, "w") as f:
            f.write("# written by tests/e2e/run.py for case %s\n" % self.run.name)
            f.write("ListenAddress 127.0.0.1:%d\n" % self.port)
            f.write("HostKey %s\n" % self.host_key)
            f.write("AuthorizedKeysFile %s\n" % os.path.join(self.home, "authorized_keys"))
            f.write("UsePAM %s\n" % ("yes" if use_pam else "no"))
            f.write("PidFile none\nStrictModes no\nPubkeyAuthentication yes\n"
                    "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                    "PermitRootLogin prohibit-password\nAllowUsers %s\nX11Forwarding no\n"
                    "AllowTcpForwarding no\nPrintMotd no\nLogLevel VERBOSE\n"
                    "Subsystem sftp internal-sftp\n" % self.user)
        return conf

    def start(self):
        os.makedirs(self.home)
        os.makedirs(self.served)
        self.host_key, self.host_entry_key = self.keygen("host_ed25519_key")
        _, self.wrong_entry_key = self.keygen("other_host_ed25519_key")  # a key this server does not have
        self.client_key, client_pub = self.keygen("client_ed25519_key")
        self.client_pub = self.client_key + ".pub"
        with open(os.path.join(self.home, "authorized_keys"), "w") as f:
            f.write(client_pub + "\n")
        self.launch(use_pam=False)
        self.known_hosts = os.path.join(self.home, "known_hosts")
        with open(self.known_hosts, "w") as f:
            f.write(self.host_entry() + "\n")
        why = self.probe()
        if why and "because account is locked" in why:
            # Without PAM, sshd refuses any login to an account whose password is
            # locked ("!" or "*" in /etc/shadow: many CI users), keys or not; PAM
            # judges the account instead and lets a key in. Same server, with PAM.
            self.stop()
            self.launch(use_pam=True)
            with open(self.known_hosts, "w") as f:
                f.write(self.host_entry() + "\n")
            why = self.probe()
        if why:
            raise Abort(why)

    def launch(self, use_pam):
        sshd = self.find("sshd")
        for attempt in range(5):
            conf = self.write_config(use_pam)
            # `sshd -t` first: it names what is wrong with the set-up (a missing
            # privilege separation directory or user) instead of dying silently
            for _ in range(2):
                p = subprocess.run([sshd, "-t", "-f", conf], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                out = p.stdout.decode("utf-8", "replace").strip()
                m = re.search(r"Missing privilege separation directory: (\S+)", out)
                if p.returncode == 0 or not m or os.getuid() != 0:
                    break
                os.makedirs(m.group(1), mode=0o755, exist_ok=True)
            if p.returncode != 0:
                raise Abort("`sshd -t -f %s` refuses the test server's configuration (rc %d, running as %s): %s"
                            % (conf, p.returncode, self.user, out))
            log = open(self.log_path, "ab")
            self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", conf], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=set_parent_death_signal)
            log.close()
            deadline = time.time() + 10
            while time.time() < deadline:
                with open(self.log_path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
                if "Server listening on 127.0.0.1 port %d" % self.port in text:
                    break
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
            if self.proc.poll() is None and "Server listening on 127.0.0.1 port %d" % self.port in text:
                break
            self.stop()
            if "Address already in use" not in text:
                raise Abort("sshd did not start (running as %s, exit %s):\n%s"
                            % (self.user, self.proc and self.proc.returncode, self.run.tail(self.log_path, 20)))
        else:
            raise Abort("sshd found no free port in 5 tries:\n%s" % self.run.tail(self.log_path, 20))

    def host_entry(self, wrong=False):
        """A known_hosts line for this server: its host key, or (wrong) another one."""
        return "[127.0.0.1]:%d %s" % (self.port, self.wrong_entry_key if wrong else self.host_entry_key)

    def probe(self):
        """OpenSSH's own sftp client, with the same key and known_hosts as paybridge
        gets: proves the server works before paybridge is judged against it.
        Returns why it does not (with sshd's log), or None."""
        cmd = [self.find("sftp"), "-b", "-", "-P", str(self.port), "-i", self.client_key,
               "-o", "UserKnownHostsFile=" + self.known_hosts, "-o", "GlobalKnownHostsFile=/dev/null",
               "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
               "-o", "ConnectTimeout=10", "%s@127.0.0.1" % self.user]
        p = subprocess.run(cmd, input=("ls %s\n" % self.served).encode(), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=30)
        if p.returncode != 0:
            return ("the test sftp server refuses OpenSSH's own client (rc %d, user %s): %s\nsshd log:\n%s"
                    % (p.returncode, self.user, p.stdout.decode("utf-8", "replace").strip(),
                       self.run.tail(self.log_path, 20)))
        return None

    def url(self):
        return "sftp://127.0.0.1:%d%s/" % (self.port, self.served)

    def subst(self, text):
        return (text.replace("{sftp_url}", self.url()).replace("{sftp_dir}", self.served)
                .replace("{sftp_key}", self.client_key).replace("{sftp_pub}", self.client_pub)
                .replace("{sftp_known_hosts}", self.known_hosts)
                .replace("{sftp_host_key_entry}", self.host_entry())
                .replace("{sftp_host_key}", self.host_entry_key)
                .replace("{sftp_wrong_host_key_entry}", self.host_entry(wrong=True))
                .replace("{sftp_port}", str(self.port)))

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- the run of one case ------------------------------------------------------------------------------

class Run:
    def __init__(self, bin_dir, source_dir, case_path, keep):
        self.bin_dir = os.path.abspath(bin_dir)
        self.source_dir = os.path.abspath(source_dir)
        self.case_path = case_path
        self.name = os.path.splitext(os.path.basename(case_path))[0]
        self.keep = keep
        with open(case_path) as f:
            try:
                self.case = json.load(f)
            except ValueError as e:
                raise CaseError("%s is not JSON: %s" % (case_path, e))
        known = {"description", "sandbox", "paybridge", "steps", "timeout_s", "comment", "allow_log_errors",
                 "pairs", "shop_status", "sftp"}
        for k in self.case:
            if k not in known:
                raise CaseError("%s: unknown top-level key %r (known: %s)" % (case_path, k, ", ".join(sorted(known))))
        self.pairs = self.case.get("pairs", ["opayo-xero"])
        if not isinstance(self.pairs, list) or not self.pairs:
            raise CaseError("pairs: a non-empty list, e.g. [\"opayo-syspro\"] (known: %s)" % ", ".join(sorted(PAIRS)))
        for p in self.pairs:
            if p not in PAIRS:
                raise CaseError("pairs: unknown pair %r (known: %s)" % (p, ", ".join(sorted(PAIRS))))
        self.shop_status = self.case.get("shop_status", False)
        if not isinstance(self.shop_status, bool):
            raise CaseError("shop_status: true or false")
        self.sftp_on = self.case.get("sftp", False)
        if not isinstance(self.sftp_on, bool):
            raise CaseError("sftp: true or false")
        self.systems = []
        for p in self.pairs:
            for system in PAIRS[p]["systems"]:
                if system not in self.systems:
                    self.systems.append(system)
        if self.shop_status:
            self.systems.append("shop")
        self.pb_conf = self.case.get("paybridge", {})
        known_pb = {"max_attempts", "xero_rate_limit", "max_body", "workers", "flow_edits", "opayo_settings",
                    "xero_settings", "syspro_settings", "sagex3_settings", "paytrace_settings", "shop_settings",
                    "paytrace_poll_interval_s", "status_webhook", "log_level", "reconcile", "secrets", "comment"}
        for k in self.pb_conf:
            if k not in known_pb:
                raise CaseError("paybridge.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known_pb))))
        for k in ("xero", "opayo", "syspro", "sagex3", "paytrace", "shop"):
            if k + "_settings" in self.pb_conf and k not in self.systems:
                raise CaseError("paybridge.%s_settings: the case's pairs do not use %s" % (k, k))
        if "paytrace_poll_interval_s" in self.pb_conf and "paytrace" not in self.systems:
            raise CaseError("paybridge.paytrace_poll_interval_s: the case's pairs do not use paytrace")
        if self.pb_conf.get("status_webhook") and not self.shop_status:
            raise CaseError("paybridge.status_webhook needs \"shop_status\": true (the shop-status connection)")
        self.failures = []
        self.t0 = time.time()
        self.deadline = self.t0 + float(self.case.get("timeout_s", 150))
        self.orders = {}          # vendorTxCode -> {"amount","currency","status","transaction_id", ...}
        self.order_lock = threading.Lock()
        self.xero_token = None
        self.notify_secret = "e2e-notify-" + secrets.token_hex(12)
        self.opayo_key = "e2e-key-" + secrets.token_hex(6)
        self.opayo_password = "e2e-pw-" + secrets.token_hex(6)
        self.xero_client_id = "e2e-client-" + secrets.token_hex(6)
        self.xero_client_secret = "e2e-secret-" + secrets.token_hex(12)
        self.xero_tenant = str(uuid.uuid4())
        self.syspro_password = "e2e-op-" + secrets.token_hex(6)
        self.x3_password = "e2e-x3-" + secrets.token_hex(6)
        self.paytrace_user = "e2e-pt-" + secrets.token_hex(4)
        self.paytrace_password = "e2e-ptpw-" + secrets.token_hex(6)
        self.paytrace_webhook_secret = "e2e-ptwh-" + secrets.token_hex(12)
        self.shop_secret = "e2e-shop-" + secrets.token_hex(12)
        self.admin_key = "e2e-admin-" + secrets.token_hex(16)
        self.vendor_name = "sandbox"
        self.report_password = "e2e-rep-" + secrets.token_hex(8)
        self.env = dict(os.environ)
        self.env.update({
            "PB_E2E_NOTIFY_SECRET": self.notify_secret,
            "PB_E2E_OPAYO_KEY": self.opayo_key,
            "PB_E2E_OPAYO_PASSWORD": self.opayo_password,
            "PB_E2E_OPAYO_REPORT_PASSWORD": self.report_password,
            "PB_E2E_OPAYO_REPORT_USER": "e2e-report",
            "PB_E2E_XERO_CLIENT_ID": self.xero_client_id,
            "PB_E2E_XERO_CLIENT_SECRET": self.xero_client_secret,
            "PB_E2E_SYSPRO_PASSWORD": self.syspro_password,
            "PB_E2E_SYSPRO_COMPANY_PASSWORD": "",
            "PB_E2E_X3_USER": X3_USER,
            "PB_E2E_X3_PASSWORD": self.x3_password,
            "PB_E2E_PAYTRACE_USER": self.paytrace_user,
            "PB_E2E_PAYTRACE_PASSWORD": self.paytrace_password,
            "PB_E2E_PAYTRACE_WEBHOOK_SECRET": self.paytrace_webhook_secret,
            "PB_E2E_SHOP_SECRET": self.shop_secret,
        })
        self.env.pop("PAYBRIDGE_SECRET_KEY", None)
        self.paytrace_token = None
        self.store_generation = 0  # restarts with a wiped store
        self.non_webhook_events = False  # refunds/chargebacks: events the /metrics counters do not count
        self.chargebacks = []     # ids opened by this case, in order
        self.dir = tempfile.mkdtemp(prefix="pb-e2e-%s-" % self.name)
        self.config_path = os.path.join(self.dir, "paybridge.yaml")
        # one copy of each pair's template, which the case may edit
        self.flow_paths = {p: os.path.join(self.dir, "flows", PAIRS[p]["flow"]) for p in self.pairs}
        self.flow_path = self.flow_paths.get("opayo-xero")
        self.sandbox = Sandbox(self)
        self.pb = Paybridge(self)
        self.sftp = SftpServer(self) if self.sftp_on else None
        if self.sftp:
            self.env["PB_E2E_SFTP_USER"] = self.sftp.user
        self.file_snapshots = {}  # expect_files "snapshot" label -> {path: (inode, mtime_ns, size)}

    # -- reporting --

    def say(self, msg):
        print("[%6.2fs] %s" % (time.time() - self.t0, msg), flush=True)

    def fail(self, msg):
        self.failures.append(msg)
        self.say("FAIL: " + msg)

    def expect(self, cond, msg):
        if not cond:
            self.fail(msg)
        return cond

    def tail(self, path, n=LOG_TAIL_LINES):
        try:
            with open(path, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return "(no log at %s)" % path
        return "\n".join("    " + l for l in lines[-n:])

    def log_lines(self, needle, n=8):
        """Lines of every paybridge log of this run that contain `needle` (the last n)."""
        hits = []
        for p in self.pb.logs:
            try:
                with open(p, "rb") as f:
                    hits += [l for l in f.read().decode("utf-8", "replace").splitlines() if needle in l]
            except OSError:
                pass
        return hits[-n:]

    def time_left(self):
        return self.deadline - time.time()

    # -- set-up --

    def sandbox_settings(self):
        sb = self.case.get("sandbox", {})
        for k in sb:
            if k not in self.systems:
                raise CaseError("sandbox.%s: not a system this case starts (%s)" % (k, ", ".join(self.systems)))
        defaults = {
            "xero": {"client_id": self.xero_client_id, "client_secret": self.xero_client_secret,
                     "tenant_id": self.xero_tenant, "limits": False},
            "opayo": {"integration_key": self.opayo_key, "integration_password": self.opayo_password,
                      "vendor_name": self.vendor_name, "notify_secret": self.notify_secret,
                      "report_user": "e2e-report", "report_password": self.report_password},
            "syspro": {"operator": SYSPRO_OPERATOR, "operator_password": self.syspro_password,
                       "company_id": SYSPRO_COMPANY},
            "sagex3": {"username": X3_USER, "password": self.x3_password, "pool_alias": X3_POOL},
            "paytrace": {"username": self.paytrace_user, "password": self.paytrace_password,
                         "webhook_secret": self.paytrace_webhook_secret},
            "shop": {"secret": self.shop_secret},
        }
        out = {"bind": "127.0.0.1"}
        for system in self.systems:
            conf = {"port": 0}
            conf.update(defaults[system])
            conf.update(sb.get(system, {}))
            out[system] = conf
        return out

    def retry(self):
        return {"base_ms": 50, "cap_ms": 500, "max_attempts": int(self.pb_conf.get("max_attempts", 8))}

    def connections(self):
        """The connections of the case's pairs (and shop-status), secrets as env:NAME."""
        conns = {}
        if "opayo" in self.systems:
            opayo_settings = {"api_base": self.sandbox.url("opayo", "/api/v1"), "vendor_name": self.vendor_name,
                              "report_url": self.sandbox.url("opayo", "/access/access.htm")}
            opayo_settings.update(self.pb_conf.get("opayo_settings", {}))
            conns["opayo-shop"] = {
                "connector": "opayo",
                "settings": opayo_settings,
                "secrets": {"notify_secret": "env:PB_E2E_NOTIFY_SECRET",
                            "integration_key": "env:PB_E2E_OPAYO_KEY",
                            "integration_password": "env:PB_E2E_OPAYO_PASSWORD",
                            "report_user": "env:PB_E2E_OPAYO_REPORT_USER",
                            "report_password": "env:PB_E2E_OPAYO_REPORT_PASSWORD"},
                "retry": self.retry(),
            }
        if "xero" in self.systems:
            xero_conn = {
                "connector": "xero",
                "settings": {
                    "api_base": self.sandbox.url("xero", "/api.xro/2.0"),
                    "token_url": self.sandbox.url("xero", "/connect/token"),
                    "tenant_id": self.xero_tenant,
                },
                "secrets": {"client_id": "env:PB_E2E_XERO_CLIENT_ID", "client_secret": "env:PB_E2E_XERO_CLIENT_SECRET"},
                "retry": self.retry(),
            }
            xero_conn["settings"].update(self.pb_conf.get("xero_settings", {}))
            rl = self.pb_conf.get("xero_rate_limit", False)
            if rl != "default":
                xero_conn["rate_limit"] = rl
            conns["xero-demo"] = xero_conn
        if "syspro" in self.systems:
            settings = {"base_url": self.sandbox.url("syspro", "/SYSPROWCFService/Rest"),
                        "company_id": SYSPRO_COMPANY, "operator": SYSPRO_OPERATOR, "bank": SYSPRO_BANK}
            settings.update(self.pb_conf.get("syspro_settings", {}))
            conns["syspro-erp"] = {
                "connector": "syspro",
                "settings": settings,
                "secrets": {"operator_password": "env:PB_E2E_SYSPRO_PASSWORD",
                            "company_password": "env:PB_E2E_SYSPRO_COMPANY_PASSWORD"},
                "retry": self.retry(),
            }
        if "paytrace" in self.systems:
            settings = {"api_base": self.sandbox.url("paytrace", "")}
            settings.update(self.pb_conf.get("paytrace_settings", {}))
            conns["paytrace-shop"] = {
                "connector": "paytrace",
                "settings": settings,
                "secrets": {"username": "env:PB_E2E_PAYTRACE_USER", "password": "env:PB_E2E_PAYTRACE_PASSWORD",
                            "webhook_secret": "env:PB_E2E_PAYTRACE_WEBHOOK_SECRET"},
                "retry": self.retry(),
            }
            if "paytrace_poll_interval_s" in self.pb_conf:
                conns["paytrace-shop"]["poll_interval_s"] = int(self.pb_conf["paytrace_poll_interval_s"])
        if "sagex3" in self.systems:
            settings = {"base_url": self.sandbox.url("sagex3", ""), "pool_alias": X3_POOL, "default_site": X3_SITE}
            settings.update(self.pb_conf.get("sagex3_settings", {}))
            conns["sagex3-erp"] = {
                "connector": "sagex3",
                "settings": settings,
                "secrets": {"username": "env:PB_E2E_X3_USER", "password": "env:PB_E2E_X3_PASSWORD"},
                "retry": self.retry(),
            }
        for name, block in self.pb_conf.get("reconcile", {}).items():
            # a gateway connection's reconcile: block; "{dir}" is the case's directory
            if name not in conns:
                raise CaseError("paybridge.reconcile.%s: not a connection of the case (%s)" % (name, ", ".join(sorted(conns))))
            conns[name]["reconcile"] = json.loads(self.conf_subst(json.dumps(block)))
            if block.get("source") == "sftp" and self.sftp:
                # the login of the test server: the current user (key authentication)
                conns[name].setdefault("secrets", {})["sftp_user"] = "env:PB_E2E_SFTP_USER"
        if self.sftp:
            # {sftp_key} and {sftp_pub} in a connection's settings (sftp_private_key, sftp_public_key)
            for conn in conns.values():
                conn["settings"] = json.loads(self.conf_subst(json.dumps(conn["settings"])))
        for name, extra in sorted(self.pb_conf.get("secrets", {}).items()):
            # more secrets of a connection, e.g. sftp_private_key: each value goes into
            # an environment variable and the config says env:NAME, as for every secret
            if name not in conns or not isinstance(extra, dict):
                raise CaseError("paybridge.secrets.%s: a mapping for a connection of the case (%s)"
                                % (name, ", ".join(sorted(conns))))
            for k, v in sorted(extra.items()):
                var = "PB_E2E_SECRET_%s_%s" % (re.sub(r"[^A-Za-z0-9]", "_", name).upper(), k.upper())
                self.env[var] = self.conf_subst(str(v))
                conns[name].setdefault("secrets", {})[k] = "env:" + var
        if self.pb_conf.get("status_webhook"):
            # every gateway connection tells the shop of its orders' states (built-in status jobs)
            for name in ("opayo-shop", "paytrace-shop"):
                if name in conns:
                    conns[name]["status_webhook"] = "shop-status"
        if "shop" in self.systems:
            settings = {"url": self.sandbox.url("shop", "/status")}
            settings.update(self.pb_conf.get("shop_settings", {}))
            conns["shop-status"] = {
                "connector": "shopwebhook",
                "settings": settings,
                "secrets": {"signing_secret": "env:PB_E2E_SHOP_SECRET"},
                "retry": self.retry(),
            }
        return conns

    def conf_subst(self, text):
        """{dir} and, with "sftp": true, the {sftp_*} names in configuration text."""
        text = text.replace("{dir}", self.dir)
        if self.sftp:
            text = self.sftp.subst(text)
        elif "{sftp_" in text:
            raise CaseError("{sftp_...} is used but the case does not start the sftp server (\"sftp\": true)")
        return text

    def write_config(self, port):
        conf = {
            "server": {"listen": "127.0.0.1:%d" % port, "threads": 4},
            "store": "sqlite:" + os.path.join(self.dir, "pb.db"),
            "workers": int(self.pb_conf.get("workers", 2)),
            "log_level": self.pb_conf.get("log_level", "info"),
            "admin": {"api_keys": [self.admin_hash], "metrics_public": True},
            "connections": self.connections(),
            "flows": [self.flow_paths[p] for p in self.pairs],
        }
        if "max_body" in self.pb_conf:
            conf["server"]["max_body"] = int(self.pb_conf["max_body"])
        text = "# written by tests/e2e/run.py for case %s\n%s\n" % (self.name, yaml_dump(conf))
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.config_path)

    def cli(self, *args, timeout=60):
        # a binary being relinked by a concurrent build cannot be executed for a
        # moment (EACCES / ETXTBSY): wait for it rather than fail the case
        for tries in range(100):
            try:
                p = subprocess.run([os.path.join(self.bin_dir, "paybridge")] + list(args), env=self.env, cwd=self.dir,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
                break
            except OSError as e:
                if e.errno not in (13, 26) or tries == 99:
                    raise
                time.sleep(0.2)
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")

    def setup(self):
        for exe in ("paybridge", "paybridge-sandbox"):
            if not os.access(os.path.join(self.bin_dir, exe), os.X_OK):
                raise Abort("%s/%s is missing: build first (cmake --build %s)" % (self.bin_dir, exe, self.bin_dir))
        os.makedirs(os.path.join(self.dir, "flows"))
        for p in self.pairs:
            src_flow = os.path.join(self.source_dir, "flows", PAIRS[p]["flow"])
            if not os.path.exists(src_flow):
                raise Abort("%s is missing" % src_flow)
            shutil.copyfile(src_flow, self.flow_paths[p])
        for edit in self.pb_conf.get("flow_edits", []):
            self.apply_flow_edit(edit)
        rc, out, err = self.cli("admin", "hash-key", self.admin_key)
        want = "sha256:" + hashlib.sha256(self.admin_key.encode()).hexdigest()
        if rc != 0 or out.strip() != want:
            raise Abort("`paybridge admin hash-key` printed %r (rc %d), expected %r" % (out.strip(), rc, want))
        self.admin_hash = out.strip()
        self.sandbox.start(self.sandbox_settings(), self.systems)
        self.say("sandbox: %s; dir %s" % (", ".join("%s :%d" % (k, self.sandbox.ports[k]) for k in self.systems), self.dir))
        if self.sftp:
            self.sftp.start()
            self.say("sshd: %s as %s (log %s)" % (self.sftp.url(), self.sftp.user, self.sftp.log_path))
        self.write_config(0)
        rc, out, err = self.cli("check", "-c", self.config_path)
        if rc != 0:
            raise Abort("`paybridge check` failed (rc %d):\n%s%s" % (rc, out, err))
        if err.strip():
            self.fail("`paybridge check` printed diagnostics (a clean config must have none):\n" + err)
        self.pb.start()
        self.say("paybridge: :%d" % self.pb.port)
        if "opayo" in self.systems:
            status, _, body = http("POST", self.sandbox.url("opayo", "/_sandbox/settings"),
                                   {"notify_url": self.pb.url("/hooks/opayo-shop"), "notify_secret": self.notify_secret})
            if status != 200:
                raise Abort("POST /_sandbox/settings on the Opayo sandbox: HTTP %d %s" % (status, short(body)))
        if "paytrace" in self.systems:
            status, _, body = http("POST", self.sandbox.url("paytrace", "/_sandbox/settings"),
                                   {"webhook_url": self.pb.url("/hooks/paytrace-shop"),
                                    "webhook_secret": self.paytrace_webhook_secret})
            if status != 200:
                raise Abort("POST /_sandbox/settings on the PayTrace sandbox: HTTP %d %s" % (status, short(body)))

    def flow_of(self, edit):
        """The flow copy an edit names ("flow": pair), or the case's only one."""
        pair = edit.get("flow")
        if pair is None:
            if len(self.pairs) != 1:
                raise CaseError("a flow edit must say which flow (\"flow\": one of %s)" % ", ".join(self.pairs))
            pair = self.pairs[0]
        if pair not in self.flow_paths:
            raise CaseError("flow edit: %r is not a pair of this case (%s)" % (pair, ", ".join(self.pairs)))
        return pair, self.flow_paths[pair]

    def apply_flow_edit(self, edit):
        known = {"replace", "with", "count", "append", "flow", "restart", "comment"}
        for k in edit:
            if k not in known:
                raise CaseError("flow edit: unknown key %r (known: %s)" % (k, ", ".join(sorted(known))))
        pair, path = self.flow_of(edit)
        name = "flows/" + PAIRS[pair]["flow"]
        with open(path) as f:
            text = f.read()
        if "append" in edit:
            if not isinstance(edit["append"], str) or "replace" in edit:
                raise CaseError("a flow edit has either \"append\" (text) or \"replace\" + \"with\": %r" % edit)
            text = text.rstrip("\n") + "\n" + edit["append"].rstrip("\n") + "\n"
        else:
            old, new = edit.get("replace"), edit.get("with")
            if not isinstance(old, str) or not isinstance(new, str):
                raise CaseError("a flow edit needs \"replace\" and \"with\" strings: %r" % edit)
            n = text.count(old)
            if n == 0:
                raise Abort("flow edit: %r does not occur in %s (did the template change?)" % (old, name))
            count = int(edit.get("count", 1))
            if n != count:
                raise Abort("flow edit: %r occurs %d times in %s, the case expects %d" % (old, n, name, count))
            text = text.replace(old, new)
        with open(path, "w") as f:
            f.write(text)

    # -- systems --

    def admin_get(self, path):
        status, _, body = http("GET", self.pb.url(path), headers={"Authorization": "Bearer " + self.admin_key})
        data = as_json(body)
        if status != 200 or data is None:
            raise Abort("GET %s: HTTP %d %s" % (path, status, short(body)))
        return data

    def events(self):
        return self.admin_get("/admin/events?limit=10000")

    def dlq(self):
        return self.admin_get("/admin/dlq?limit=10000")

    def metrics(self):
        status, _, body = http("GET", self.pb.url("/metrics"))
        if status != 200:
            raise Abort("GET /metrics: HTTP %d %s" % (status, short(body)))
        return parse_metrics(body.decode())

    def sandbox_get(self, system, path):
        status, _, body = http("GET", self.sandbox.url(system, path))
        data = as_json(body)
        if status != 200 or data is None:
            raise Abort("GET %s on the %s sandbox: HTTP %d %s" % (path, system, status, short(body)))
        return data

    def opayo_basic(self):
        tok = base64.b64encode(("%s:%s" % (self.opayo_key, self.opayo_password)).encode()).decode()
        return {"Authorization": "Basic " + tok}

    def xero_api(self, path):
        """GET on the Xero sandbox's real API, retrying the faults a case may have left behind."""
        deadline = time.time() + 30
        while True:
            if not self.xero_token:
                basic = base64.b64encode(("%s:%s" % (self.xero_client_id, self.xero_client_secret)).encode()).decode()
                status, _, body = http("POST", self.sandbox.url("xero", "/connect/token"),
                                       "grant_type=client_credentials",
                                       {"Authorization": "Basic " + basic,
                                        "Content-Type": "application/x-www-form-urlencoded"})
                tok = as_json(body)
                if status == 200 and tok and tok.get("access_token"):
                    self.xero_token = tok["access_token"]
                elif time.time() > deadline:
                    raise Abort("Xero sandbox /connect/token: HTTP %d %s" % (status, short(body)))
                else:
                    time.sleep(0.5)
                    continue
            status, hdrs, body = http("GET", self.sandbox.url("xero", "/api.xro/2.0" + path),
                                      headers={"Authorization": "Bearer " + self.xero_token,
                                               "xero-tenant-id": self.xero_tenant, "Accept": "application/json"})
            if status == 200:
                return as_json(body, decimals=True)
            if status == 401:
                self.xero_token = None
            if status in (0, 401, 429, 500, 502, 503) and time.time() < deadline:
                time.sleep(min(5.0, float(hdrs.get("retry-after", "0.5") or 0.5)))
                continue
            raise Abort("GET %s on the Xero sandbox: HTTP %d %s" % (path, status, short(body)))

    def xero_list(self, entity):
        items, page = [], 1
        while True:
            data = self.xero_api("/%s?page=%d&pageSize=1000" % (entity, page))
            batch = data.get(entity, [])
            items += batch
            if len(batch) < 1000:
                return items
            page += 1

    def xero_invoices_by_reference(self, reference):
        where = urllib.parse.quote('Reference=="%s"' % reference)
        return self.xero_api("/Invoices?where=" + where).get("Invoices", [])

    # -- orders --

    def play_order(self, o, vtc):
        """One shop checkout through the Opayo sandbox. Returns (record, error text)."""
        card = o.get("card", "ok")
        number = CARDS.get(card, card)
        expect = o.get("expect_status", CARD_OUTCOME.get(card, "Ok"))
        cust = o.get("customer", {})
        first = cust.get("first_name", "Ann")
        last = cust.get("last_name", "Smith")
        email = cust.get("email", "ann.smith@example.com")
        if o.get("unique_customer"):
            # Xero wants contact names unique as well as e-mail addresses; Opayo
            # takes last names of at most 20 characters
            email = email.replace("@", "+%s@" % vtc.lower())
            last = "%s-%s" % (last, vtc[-max(1, 19 - len(last)):])
        status, _, body = http("POST", self.sandbox.url("opayo", "/api/v1/merchant-session-keys"),
                               {"vendorName": self.vendor_name}, self.opayo_basic())
        r = as_json(body) or {}
        if status != 201:
            return None, "merchant-session-keys: HTTP %d %s" % (status, short(body))
        msk = r["merchantSessionKey"]
        status, _, body = http("POST", self.sandbox.url("opayo", "/api/v1/card-identifiers"),
                               {"cardDetails": {"cardholderName": "%s %s" % (first, last), "cardNumber": number,
                                                "expiryDate": o.get("expiry", "1239"), "securityCode": "123"}},
                               {"Authorization": "Bearer " + msk})
        r = as_json(body) or {}
        if status != 201:
            return None, "card-identifiers: HTTP %d %s" % (status, short(body))
        tx = {
            "transactionType": "Payment",
            "paymentMethod": {"card": {"merchantSessionKey": msk, "cardIdentifier": r["cardIdentifier"]}},
            "vendorTxCode": vtc,
            "amount": int(o.get("amount", 1099)),
            "currency": o.get("currency", "GBP"),
            "description": o.get("description", "Order " + vtc),
            "customerFirstName": first,
            "customerLastName": last,
            "customerEmail": email,
            "billingAddress": {"address1": o.get("address1", "88 High Street"), "city": o.get("city", "London"),
                               "postalCode": o.get("postal_code", "412"), "country": o.get("country", "GB")},
            "entryMethod": "Ecommerce",
        }
        status, _, body = http("POST", self.sandbox.url("opayo", "/api/v1/transactions"), tx, self.opayo_basic())
        r = as_json(body) or {}
        if status != 201:
            return None, "transactions: HTTP %d %s" % (status, short(body))
        rec = {"gateway": "opayo", "vendor_tx_code": vtc, "amount": tx["amount"], "currency": tx["currency"], "status": r.get("status"),
               "transaction_id": r.get("transactionId"), "email": email, "name": "%s %s" % (first, last)}
        if r.get("status") != expect:
            return rec, "transaction %s: status %r (%s), expected %r" % (vtc, r.get("status"), r.get("statusDetail"), expect)
        return rec, None

    def ok_orders(self, gateway="opayo"):
        return [o for o in self.orders.values() if o["status"] == "Ok" and o["gateway"] == gateway]

    def gateway_orders(self, gateway):
        return {k: o for k, o in self.orders.items() if o["gateway"] == gateway}

    # ---- steps ----------------------------------------------------------------------------------------------

    def step_order(self, spec, step):
        o = dict(spec)
        known = {"vendor_tx_code", "amount", "currency", "card", "customer", "count", "expect_status", "address1",
                 "postal_code", "city", "country", "description", "expiry", "unique_customer", "parallel"}
        for k in o:
            if k not in known:
                raise CaseError("order.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        base = o.get("vendor_tx_code") or "E2E-%s" % secrets.token_hex(3).upper()
        count = int(o.get("count", 1))
        codes = [base] if count == 1 else ["%s-%03d" % (base, i + 1) for i in range(count)]
        results = {}

        def play(vtc):
            results[vtc] = self.play_order(o, vtc)

        parallel = int(o.get("parallel", 1))
        if parallel > 1:
            # all orders at once: their notifications reach paybridge within milliseconds
            for i in range(0, len(codes), parallel):
                threads = [threading.Thread(target=play, args=(vtc,)) for vtc in codes[i:i + parallel]]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
        else:
            for vtc in codes:
                play(vtc)
        for vtc in codes:
            rec, err = results[vtc]
            if rec:
                self.orders[vtc] = rec
            if err:
                self.fail("order %s: %s" % (vtc, err))
        return "%d order(s) %s" % (len(codes), codes[0] + (" .. " + codes[-1] if count > 1 else ""))

    def step_resend(self, vtc, step):
        rec = self.orders.get(vtc)
        if not rec:
            raise CaseError("resend %r: no order with that vendorTxCode / invoice_id was played" % vtc)
        if rec["gateway"] == "paytrace":
            path = "/_sandbox/webhook/" + rec["transaction_id"]
        else:
            path = "/_sandbox/notify/" + rec["transaction_id"]
        status, _, body = http("POST", self.sandbox.url(rec["gateway"], path), {})
        self.expect(status == 202, "resend %s: POST %s: HTTP %d %s" % (vtc, path, status, short(body)))
        return "%s notification of %s queued again" % (rec["gateway"], vtc)

    # -- PayTrace sales --

    def paytrace_post(self, path, body):
        """A PayTrace API call with a bearer token (fetched, and fetched again after a 401)."""
        for _ in range(2):
            if not self.paytrace_token:
                form = urllib.parse.urlencode({"grant_type": "password", "username": self.paytrace_user,
                                               "password": self.paytrace_password})
                status, _, resp = http("POST", self.sandbox.url("paytrace", "/oauth/token"), form,
                                       {"Content-Type": "application/x-www-form-urlencoded"})
                tok = as_json(resp)
                if status != 200 or not tok or not tok.get("access_token"):
                    raise Abort("PayTrace sandbox /oauth/token: HTTP %d %s" % (status, short(resp)))
                self.paytrace_token = tok["access_token"]
            status, _, resp = http("POST", self.sandbox.url("paytrace", path), body,
                                   {"Authorization": "Bearer " + self.paytrace_token})
            if status != 401:
                return status, resp
            self.paytrace_token = None
        return status, resp

    def play_paytrace_sale(self, o, invoice_id):
        """One keyed sale on the PayTrace sandbox. Returns (record, error text)."""
        card = o.get("card", "ok")
        number = PAYTRACE_CARDS.get(card, card)
        expect = o.get("expect", "declined" if card == "declined" else "approved")
        cust = o.get("customer", {})
        name = cust.get("name", "Ann Smith")
        email = cust.get("email", "ann.smith@example.com")
        if o.get("unique_customer"):
            email = email.replace("@", "+%s@" % invoice_id.lower())
        lines = o.get("line_items")
        if "amount" in o:
            amount = Decimal(str(o["amount"]))
        elif lines:
            amount = sum((Decimal(str(li["quantity"])) * Decimal(str(li["unit_price"])) for li in lines), Decimal(0))
        else:
            amount = Decimal("10.99")
        if amount != amount.quantize(Decimal("0.01")):
            raise CaseError("paytrace_sale %s: amount %s is not exact in cents" % (invoice_id, amount))
        addr = {"name": name, "street_address": "8320 E. West St.", "city": "Spokane", "state": "WA",
                "zip": "85284", "country": "US"}
        addr.update(o.get("address", {}))
        req = {"amount": "%.2f" % amount,
               "credit_card": {"number": number, "expiration_month": "12", "expiration_year": "2039"},
               "csc": "999", "invoice_id": invoice_id, "email": email, "billing_address": addr,
               "description": o.get("description", "Order " + invoice_id)}
        if "customer_id" in o:
            req["customer_id"] = o["customer_id"]
        if lines:
            req["line_items"] = [{"sku": li["sku"], "description": li.get("description", li["sku"]),
                                  "quantity": li["quantity"], "unit_price": str(li["unit_price"])} for li in lines]
        status, resp = self.paytrace_post("/v1/transactions/sale/keyed", req)
        r = as_json(resp) or {}
        if status not in (200, 400) or "transaction_id" not in r:
            return None, "sale/keyed: HTTP %d %s" % (status, short(resp))
        rec = {"gateway": "paytrace", "vendor_tx_code": invoice_id, "amount": int(amount * 100), "currency": "USD",
               "status": "Ok" if r.get("success") else "Declined", "transaction_id": str(r["transaction_id"]),
               "email": email, "name": name, "lines": lines or [], "customer_id": o.get("customer_id"),
               "response_code": r.get("response_code"), "status_message": r.get("status_message")}
        got = "approved" if r.get("success") else "declined"
        if got != expect:
            return rec, "sale %s: %s (%s %s), expected %s" % (invoice_id, got, r.get("response_code"),
                                                              r.get("status_message"), expect)
        return rec, None

    def step_paytrace_sale(self, spec, step):
        known = {"invoice_id", "amount", "card", "customer", "customer_id", "line_items", "description", "address",
                 "count", "unique_customer", "expect", "parallel"}
        for k in spec:
            if k not in known:
                raise CaseError("paytrace_sale.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        if "paytrace" not in self.systems:
            raise CaseError("paytrace_sale needs the pair paytrace-sagex3")
        base = spec.get("invoice_id") or "PT-%s" % secrets.token_hex(3).upper()
        count = int(spec.get("count", 1))
        codes = [base] if count == 1 else ["%s-%03d" % (base, i + 1) for i in range(count)]
        notes, results = [], {}
        for code in codes:
            if code in self.orders:
                raise CaseError("paytrace_sale: invoice_id %s was used before in this case" % code)

        def play(code):
            results[code] = self.play_paytrace_sale(spec, code)

        if spec.get("parallel"):
            # every sale at once: their webhooks reach paybridge within milliseconds
            threads = [threading.Thread(target=play, args=(code,)) for code in codes]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        else:
            for code in codes:
                play(code)
        for code in codes:
            rec, err = results[code]
            if rec:
                self.orders[code] = rec
                notes.append("%s -> %s %s (%s)" % (code, rec["transaction_id"], rec["status"], rec["response_code"]))
            if err:
                self.fail("paytrace sale %s: %s" % (code, err))
        return "; ".join(notes)

    def notification_body(self, spec):
        """The webhook body of a `webhook` step, as bytes."""
        if "raw" in spec:
            return spec["raw"].encode()
        if "notification_of" in spec:
            vtc = spec["notification_of"]
            txs = self.sandbox_get("opayo", "/_sandbox/transactions")
            tx = next((t for t in txs if t.get("vendorTxCode") == vtc), None)
            if tx is None:
                raise Abort("webhook: the Opayo sandbox has no transaction %r" % vtc)
            body = {"notificationId": lettered_guid(), "eventType": "transaction.completed", "createdAt": now_iso(),
                    "vendorName": self.vendor_name, "transaction": tx}
        elif "body" in spec:
            body = spec["body"]
            if isinstance(body, str):
                return body.encode()
            body = json.loads(json.dumps(body))
            if isinstance(body, dict):
                body.setdefault("createdAt", now_iso())
        else:
            body = self.template_notification()
        raws = {}
        for path, value in spec.get("set", {}).items():
            if isinstance(value, dict) and set(value) == {"$raw"}:
                token = "__pb_e2e_raw_%d__" % len(raws)
                raws[token] = value["$raw"]
                value = token
            set_path(body, path, value)
        for path in spec.get("delete", []):
            del_path(body, path)
        text = json.dumps(body)
        for token, raw in raws.items():
            text = text.replace('"%s"' % token, raw)
        return text.encode()

    def template_notification(self):
        """A valid, signed-able transaction.completed notification for a
        transaction the gateway never made (bad_input only ever sends it broken)."""
        amount = 1099
        return {
            "notificationId": lettered_guid(),
            "eventType": "transaction.completed",
            "createdAt": now_iso(),
            "vendorName": self.vendor_name,
            "transaction": {
                "transactionId": lettered_guid(),
                "transactionType": "Payment",
                "status": "Ok",
                "statusCode": "0000",
                "statusDetail": "The Authorisation was Successful.",
                "retrievalReference": "13645201",
                "bankAuthorisationCode": "999777",
                "bankResponseCode": "00",
                "amount": {"totalAmount": amount, "saleAmount": amount, "surchargeAmount": 0},
                "currency": "GBP",
                "paymentMethod": {"card": {"cardType": "Visa", "lastFourDigits": "0006", "expiryDate": "1239",
                                           "cardIdentifier": lettered_guid(), "reusable": False}},
                "3DSecure": {"status": "Authenticated"},
                "vendorTxCode": "E2E-TEMPLATE-1",
                "description": "Template order",
                "customerFirstName": "Ann",
                "customerLastName": "Smith",
                "customerEmail": "ann.smith@example.com",
                "billingAddress": {"address1": "88 High Street", "city": "London", "postalCode": "412", "country": "GB"},
                "fraudScore": 3,
                "createdAt": now_iso(),
            },
        }

    def step_webhook(self, spec, step):
        known = {"raw", "body", "notification_of", "template", "set", "delete", "sign", "secret", "headers", "size",
                 "path", "content_type"}
        for k in spec:
            if k not in known:
                raise CaseError("webhook.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        body = self.notification_body(spec)
        if "size" in spec:
            want = int(spec["size"])
            if len(body) < want:
                body += b" " * (want - len(body))
        headers = {"Content-Type": spec.get("content_type", "application/json")}
        sign = spec.get("sign", True)
        secret = spec.get("secret", self.notify_secret)
        if sign is True:
            headers["X-Opayo-Signature"] = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        elif sign == "wrong":
            headers["X-Opayo-Signature"] = hmac.new(b"not-the-secret", body, hashlib.sha256).hexdigest()
        elif sign is not False:
            raise CaseError("webhook.sign: true, false or \"wrong\"")
        headers.update(spec.get("headers", {}))
        path = spec.get("path", "/hooks/opayo-shop")
        status, _, resp = http("POST", self.pb.url(path), body, headers)
        data = as_json(resp)
        what = "webhook %s (%d bytes)" % (path, len(body))
        want_status = step.get("expect_status", 200)
        self.expect(status == want_status, "%s: HTTP %d, expected %d; body %s" % (what, status, want_status, short(resp)))
        if status >= 400 or "expect_error_code" in step or "expect_message_contains" in step:
            err = data.get("error") if isinstance(data, dict) else None
            if self.expect(isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str),
                           "%s: the reply is not {\"error\":{\"code\",\"message\"}}: %s" % (what, short(resp))):
                if "expect_error_code" in step:
                    self.expect(err["code"] == step["expect_error_code"],
                                "%s: error code %r, expected %r (message: %s)" % (what, err["code"], step["expect_error_code"], err["message"]))
                for needle in as_list(step.get("expect_message_contains", [])):
                    self.expect(needle.lower() in err["message"].lower(),
                                "%s: error message %r does not mention %r" % (what, err["message"], needle))
        if "expect_duplicate" in step or "expect_accepted" in step:
            events = data.get("events") if isinstance(data, dict) else None
            if self.expect(isinstance(events, list) and len(events) == 1,
                           "%s: expected {\"accepted\":true,\"events\":[one event]}, got %s" % (what, short(resp))):
                if "expect_accepted" in step:
                    self.expect(data.get("accepted") is step["expect_accepted"],
                                "%s: accepted is %r, expected %r" % (what, data.get("accepted"), step["expect_accepted"]))
                if "expect_duplicate" in step:
                    self.expect(events[0].get("duplicate") is step["expect_duplicate"],
                                "%s: duplicate is %r, expected %r" % (what, events[0].get("duplicate"), step["expect_duplicate"]))
        return "%s -> %d %s" % (what, status, short(resp, 160))

    def step_faults(self, spec, step):
        spec = dict(spec)
        system = spec.pop("system", None)
        if system not in self.systems:
            raise CaseError("faults.system: one of the case's systems (%s)" % ", ".join(self.systems))
        status, _, body = http("POST", self.sandbox.url(system, "/_sandbox/faults"), spec)
        if status != 200:
            raise Abort("POST /_sandbox/faults on %s: HTTP %d %s" % (system, status, short(body)))
        return "%s faults %s" % (system, json.dumps(spec))

    def step_sandbox_settings(self, spec, step):
        spec = dict(spec)
        system = spec.pop("system", "opayo")
        if system not in self.systems or system in ("xero", "sagex3"):
            raise CaseError("sandbox_settings.system: one of %s (the case's systems with run-time settings)"
                            % ", ".join(s for s in self.systems if s not in ("xero", "sagex3")))
        status, _, body = http("POST", self.sandbox.url(system, "/_sandbox/settings"), spec)
        if status != 200:
            raise Abort("POST /_sandbox/settings on %s: HTTP %d %s" % (system, status, short(body)))
        return "%s settings %s" % (system, json.dumps(spec))

    def step_sandbox_post(self, spec, step):
        """A POST to an emulator's admin route, e.g. the X3 emulator's /_sandbox/inject."""
        known = {"system", "path", "body", "expect_status"}
        for k in spec:
            if k not in known:
                raise CaseError("sandbox_post.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        system, path = spec.get("system"), spec.get("path", "")
        if system not in self.systems:
            raise CaseError("sandbox_post.system: one of the case's systems (%s)" % ", ".join(self.systems))
        if not path.startswith("/_sandbox/"):
            raise CaseError("sandbox_post.path: an admin route, /_sandbox/...")
        status, _, body = http("POST", self.sandbox.url(system, path), spec.get("body", {}))
        want = spec.get("expect_status", 200)
        if status != want:
            raise Abort("POST %s on %s: HTTP %d (expected %d) %s" % (path, system, status, want, short(body)))
        return "%s %s -> %d %s" % (system, path, status, short(body, 120))

    def settle(self, timeout_s, allow_notify_failures=False, min_events=0):
        """Wait until the gateways have nothing left to deliver, paybridge has
        stored at least min_events events and none of them is pending."""
        deadline = min(time.time() + timeout_s, self.deadline)
        gateways = [g for g in ("opayo", "paytrace") if g in self.systems]
        while True:
            self.pb.check_alive()
            stats = {}
            for g in gateways:
                st = self.sandbox_get(g, "/_sandbox/stats")
                stats[g] = (st, st["notifications_pending"] if g == "opayo" else st["webhooks_pending"])
            pending_events = None
            n_events = None
            if all(p == 0 for _, p in stats.values()):
                evs = self.events()
                n_events = len(evs)
                pending_events = [e for e in evs if e.get("state") == "pending"]
                if not pending_events and n_events >= min_events:
                    break
            if time.time() > deadline:
                msg = "not settled after %.0f s:" % timeout_s
                for g, (st, p) in stats.items():
                    if g == "opayo":
                        msg += (" %d notification(s) still pending at the Opayo gateway (sent %d, acknowledged %d);"
                                % (p, st["notifications_sent"], st["notifications_acknowledged"]))
                    else:
                        msg += (" %d webhook(s) still pending at PayTrace (sent %d, acknowledged %d, dropped %d);"
                                % (p, st["webhooks_sent"], st["webhooks_acknowledged"], st["webhooks_dropped"]))
                if pending_events:
                    msg += " %d event(s) pending in paybridge: %s" % (len(pending_events), ", ".join(
                        "%s(%s)" % (e.get("id"), e.get("gateway_event_id")) for e in pending_events[:5]))
                if n_events is not None and n_events < min_events:
                    msg += " paybridge stored %d event(s), the step waits for %d" % (n_events, min_events)
                msg += self.missing_events_note()
                rej = self.log_lines("event.rejected", 5)
                if rej:
                    msg += "\n  paybridge rejected notifications:\n    " + "\n    ".join(rej)
                raise Abort(msg)
            time.sleep(0.2)
        for g, (st, _) in stats.items():
            failed = st["notifications_failed"] if g == "opayo" else st["webhooks_failed"]
            if failed and not allow_notify_failures:
                rej = self.log_lines("event.rejected", 5)
                self.fail("the %s sandbox gave up on %d notification(s): paybridge never acknowledged them%s%s"
                          % ("Opayo" if g == "opayo" else "PayTrace", failed, self.missing_events_note(),
                             ("\n  paybridge log:\n    " + "\n    ".join(rej)) if rej else ""))
        return stats

    def missing_events_note(self):
        """Which gateway transactions paybridge has no event for, with their ids."""
        try:
            stored = {e.get("gateway_event_id") for e in self.events()}
            missing = []
            if "opayo" in self.systems:
                missing += ["%s (Opayo transactionId %s, cardIdentifier %s)"
                            % (t.get("vendorTxCode"), t.get("transactionId"),
                               ((t.get("paymentMethod") or {}).get("card") or {}).get("cardIdentifier"))
                            for t in self.sandbox_get("opayo", "/_sandbox/transactions")
                            if t.get("transactionId") not in stored]
            if "paytrace" in self.systems:
                missing += ["%s (PayTrace transaction_id %s, %s)" % (t.get("invoice_id"), t.get("transaction_id"),
                                                                     t.get("transaction_type"))
                            for t in self.sandbox_get("paytrace", "/_sandbox/transactions")
                            if str(t.get("transaction_id")) not in stored]
        except Abort:
            return ""
        if not missing:
            return ""
        return "\n  transactions with no stored event: " + "; ".join(missing[:5])

    def step_wait_settled(self, spec, step):
        spec = spec if isinstance(spec, dict) else {}
        known = {"timeout_s", "allow_notify_failures", "min_events"}
        for k in spec:
            if k not in known:
                raise CaseError("wait_settled.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        stats = self.settle(float(spec.get("timeout_s", 60)), spec.get("allow_notify_failures", False),
                            int(spec.get("min_events", 0)))
        notes = []
        for g, (st, _) in stats.items():
            if g == "opayo":
                notes.append("opayo sent %d, acknowledged %d" % (st["notifications_sent"], st["notifications_acknowledged"]))
            else:
                notes.append("paytrace sent %d, acknowledged %d, dropped %d"
                             % (st["webhooks_sent"], st["webhooks_acknowledged"], st["webhooks_dropped"]))
        return "settled: " + "; ".join(notes)

    def step_sleep(self, seconds, step):
        time.sleep(float(seconds))
        return "slept %ss" % seconds

    def step_expect_xero(self, spec, step):
        known = {"contacts", "invoices", "payments", "duplicate_invoice_references", "duplicate_payment_references",
                 "invoice", "no_invoice", "every_order_posted_once", "min_requests", "rate_limited", "credit_notes",
                 "credit_note", "duplicate_credit_note_references"}
        for k in spec:
            if k not in known:
                raise CaseError("expect_xero.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        st = self.sandbox_get("xero", "/_sandbox/stats")
        for key in ("contacts", "invoices", "payments", "credit_notes"):
            if key in spec:
                self.expect(st[key] == spec[key], "Xero holds %d %s, expected %d" % (st[key], key, spec[key]))
        for key in ("duplicate_invoice_references", "duplicate_payment_references", "duplicate_credit_note_references"):
            if key not in st:
                continue  # an older sandbox without credit notes
            want = spec.get(key, 0)
            self.expect(st[key] == want, "Xero stats: %s = %d, expected %d" % (key, st[key], want))
        for cn in as_list(spec.get("credit_note", [])):
            self.check_credit_note(cn)
        if "rate_limited" in spec:
            total = sum(st.get("rate_limited", {}).values())
            self.expect(total <= spec["rate_limited"], "Xero refused %d call(s) for its own rate limits (%s), at most %d expected"
                        % (total, json.dumps(st.get("rate_limited")), spec["rate_limited"]))
        for inv in as_list(spec.get("invoice", [])):
            self.check_invoice(inv)
        for ref in as_list(spec.get("no_invoice", [])):
            found = self.xero_invoices_by_reference(ref)
            self.expect(not found, "Xero has %d invoice(s) with Reference %r, expected none" % (len(found), ref))
        if spec.get("every_order_posted_once"):
            self.check_every_order_once()
        return "Xero: %d contacts, %d invoices, %d payments" % (st["contacts"], st["invoices"], st["payments"])

    def check_invoice(self, want):
        ref = want["reference"]
        invs = self.xero_invoices_by_reference(ref)
        if not self.expect(len(invs) == want.get("count", 1),
                           "Xero has %d invoice(s) with Reference %r, expected %d" % (len(invs), ref, want.get("count", 1))):
            return
        inv = invs[0]
        cur = inv.get("CurrencyCode")
        checks = [("status", "Status"), ("type", "Type"), ("currency", "CurrencyCode")]
        for k, field in checks:
            if k in want:
                self.expect(inv.get(field) == want[k], "invoice %s: %s is %r, expected %r" % (ref, field, inv.get(field), want[k]))
        for k, field in (("total_minor", "Total"), ("amount_due_minor", "AmountDue"), ("amount_paid_minor", "AmountPaid"),
                         ("subtotal_minor", "SubTotal")):
            if k in want:
                got = to_minor(inv.get(field), cur)
                self.expect(got == want[k], "invoice %s: %s is %s %s (%r minor units), expected %d minor units"
                            % (ref, field, inv.get(field), cur, got, want[k]))
        contact = inv.get("Contact") or {}
        if "contact_name" in want:
            self.expect(contact.get("Name") == want["contact_name"],
                        "invoice %s: contact %r, expected %r" % (ref, contact.get("Name"), want["contact_name"]))
        if "contact_email" in want and contact.get("ContactID"):
            cs = self.xero_api("/Contacts/" + contact["ContactID"]).get("Contacts", [])
            email = cs[0].get("EmailAddress") if cs else None
            self.expect(email == want["contact_email"], "invoice %s: contact email %r, expected %r" % (ref, email, want["contact_email"]))
        if "line_account_code" in want:
            codes = sorted({li.get("AccountCode") for li in inv.get("LineItems", [])})
            self.expect(codes == [want["line_account_code"]],
                        "invoice %s: line account codes %s, expected [%r]" % (ref, codes, want["line_account_code"]))
        if "payments" in want or "payment_total_minor" in want:
            pays = [p for p in self.xero_list("Payments") if (p.get("Invoice") or {}).get("InvoiceID") == inv.get("InvoiceID")]
            if "payments" in want:
                self.expect(len(pays) == want["payments"], "invoice %s: %d payment(s) in Xero, expected %d" % (ref, len(pays), want["payments"]))
            if "payment_total_minor" in want:
                total = sum(to_minor(p.get("Amount"), cur) or 0 for p in pays)
                self.expect(total == want["payment_total_minor"],
                            "invoice %s: payments total %d minor units, expected %d" % (ref, total, want["payment_total_minor"]))

    def check_credit_note(self, want):
        """One Xero credit note, read back through GET /CreditNotes (and its refund payments
        through GET /Payments)."""
        known = {"reference", "reference_prefix", "count", "type", "status", "currency", "total_minor",
                 "remaining_credit_minor", "same_contact_as", "refund_payments", "refund_payment_total_minor"}
        for k in want:
            if k not in known:
                raise CaseError("expect_xero.credit_note.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        notes = self.xero_list("CreditNotes")
        if "reference" in want:
            label = want["reference"]
            found = [c for c in notes if c.get("Reference") == want["reference"]]
        else:
            label = want["reference_prefix"] + "..."
            found = [c for c in notes if (c.get("Reference") or "").startswith(want["reference_prefix"])]
        if not self.expect(len(found) == want.get("count", 1), "Xero has %d credit note(s) with Reference %s, expected %d (all: %s)"
                           % (len(found), label, want.get("count", 1), [c.get("Reference") for c in notes])) or not found:
            return
        cn = found[0]
        cur = cn.get("CurrencyCode")
        what = "credit note %s (%s)" % (cn.get("CreditNoteNumber"), cn.get("Reference"))
        for k, field in (("type", "Type"), ("status", "Status"), ("currency", "CurrencyCode")):
            if k in want:
                self.expect(cn.get(field) == want[k], "%s: %s is %r, expected %r" % (what, field, cn.get(field), want[k]))
        for k, field in (("total_minor", "Total"), ("remaining_credit_minor", "RemainingCredit")):
            if k in want:
                got = to_minor(cn.get(field), cur)
                self.expect(got == want[k], "%s: %s is %s %s (%r minor units), expected %d minor units"
                            % (what, field, cn.get(field), cur, got, want[k]))
        if "same_contact_as" in want:
            invs = self.xero_invoices_by_reference(want["same_contact_as"])
            inv_contact = ((invs[0].get("Contact") or {}).get("ContactID")) if invs else None
            self.expect(inv_contact and (cn.get("Contact") or {}).get("ContactID") == inv_contact,
                        "%s: contact %s, not the contact of invoice %s (%s)" % (what, (cn.get("Contact") or {}).get("ContactID"),
                                                                           want["same_contact_as"], inv_contact))
        if "refund_payments" in want or "refund_payment_total_minor" in want:
            pays = [p for p in self.xero_list("Payments") if (p.get("CreditNote") or {}).get("CreditNoteID") == cn.get("CreditNoteID")]
            if "refund_payments" in want:
                self.expect(len(pays) == want["refund_payments"], "%s: %d refund payment(s), expected %d" % (what, len(pays), want["refund_payments"]))
            if "refund_payment_total_minor" in want:
                total = sum(to_minor(p.get("Amount"), cur) or 0 for p in pays)
                self.expect(total == want["refund_payment_total_minor"], "%s: refund payments total %d minor units, expected %d"
                            % (what, total, want["refund_payment_total_minor"]))

    def check_every_order_once(self):
        """Each authorised order: exactly one invoice with its vendorTxCode as Reference, fully
        paid by exactly one payment; each other order: nothing."""
        invoices = self.xero_list("Invoices")
        # payments on invoices (refunds are payments on credit notes)
        payments = [p for p in self.xero_list("Payments") if (p.get("Invoice") or {}).get("InvoiceID")]
        by_ref = {}
        for inv in invoices:
            by_ref.setdefault(inv.get("Reference"), []).append(inv)
        pays_by_inv = {}
        for p in payments:
            pays_by_inv.setdefault((p.get("Invoice") or {}).get("InvoiceID"), []).append(p)
        bad = []
        orders = self.gateway_orders("opayo")
        for vtc, o in sorted(orders.items()):
            invs = by_ref.get(vtc, [])
            if o["status"] != "Ok":
                if invs:
                    bad.append("%s (%s): %d invoice(s), expected none" % (vtc, o["status"], len(invs)))
                continue
            if len(invs) != 1:
                bad.append("%s: %d invoice(s), expected exactly 1" % (vtc, len(invs)))
                continue
            inv = invs[0]
            ps = pays_by_inv.get(inv.get("InvoiceID"), [])
            if len(ps) != 1:
                bad.append("%s: %d payment(s) on invoice %s, expected exactly 1" % (vtc, len(ps), inv.get("InvoiceNumber")))
            if inv.get("Status") != "PAID":
                bad.append("%s: invoice status %s, expected PAID" % (vtc, inv.get("Status")))
            if inv.get("CurrencyCode") == o["currency"] and to_minor(inv.get("Total"), o["currency"]) != o["amount"]:
                bad.append("%s: invoice total %s %s, expected %d minor units" % (vtc, inv.get("Total"), o["currency"], o["amount"]))
        n_ok = len(self.ok_orders())
        strays = [r for r in by_ref if r not in orders]
        if strays:
            bad.append("%d invoice(s) with references no order had: %s" % (len(strays), ", ".join(map(str, strays[:5]))))
        if len(payments) != n_ok:
            bad.append("Xero holds %d payment(s) for %d authorised order(s)" % (len(payments), n_ok))
        for b in bad[:20]:
            self.fail("exactly once: " + b)
        if len(bad) > 20:
            self.fail("exactly once: ... and %d more" % (len(bad) - 20))
        self.say("exactly once: %d authorised order(s), %d invoice(s), %d payment(s)" % (n_ok, len(invoices), len(payments)))

    def step_expect_dlq(self, spec, step):
        dl = self.dlq()
        want = spec.get("count")
        if want is not None:
            self.expect(len(dl) == want, "the dead-letter queue holds %d job(s), expected %d: %s"
                        % (len(dl), want, "; ".join("%s/%s: %s" % (d.get("flow"), d.get("step_name"), d.get("reason")) for d in dl[:3])))
        for needle in as_list(spec.get("reason_contains", [])):
            for d in dl:
                self.expect(needle.lower() in (d.get("reason") or "").lower(),
                            "dead letter %s (%s): reason %r does not mention %r" % (d.get("job_id"), d.get("step_name"), d.get("reason"), needle))
        if "step_name" in spec:
            for d in dl:
                self.expect(d.get("step_name") == spec["step_name"],
                            "dead letter %s: step %r, expected %r" % (d.get("job_id"), d.get("step_name"), spec["step_name"]))
        # the CLI reads the same store
        rc, out, err = self.cli("dlq", "list", "-c", self.config_path)
        if self.expect(rc == 0, "`paybridge dlq list` failed (rc %d): %s" % (rc, err.strip())):
            rows = [l for l in out.splitlines()[1:] if l.strip()]
            if want is not None:
                self.expect(len(rows) == want, "`paybridge dlq list` shows %d row(s), expected %d:\n%s" % (len(rows), want, out))
            for needle in as_list(spec.get("reason_contains", [])):
                for r in rows:
                    self.expect(needle.lower() in r.lower(), "`paybridge dlq list` row does not mention %r: %s" % (needle, r))
        return "dead letters: %d" % len(dl)

    def step_expect_events(self, spec, step):
        known = {"count", "duplicates", "states", "types"}
        for k in spec:
            if k not in known:
                raise CaseError("expect_events.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        evs = self.events()
        dups = sum(int(e.get("duplicates") or 0) for e in evs)
        if "count" in spec:
            self.expect(len(evs) == spec["count"], "paybridge stored %d event(s), expected %d: %s"
                        % (len(evs), spec["count"], ", ".join("%s %s" % (e.get("type"), e.get("gateway_event_id")) for e in evs[:5])))
        if "duplicates" in spec:
            self.expect(dups == spec["duplicates"], "paybridge counted %d duplicate deliveries, expected %d" % (dups, spec["duplicates"]))
        for state, n in spec.get("states", {}).items():
            got = sum(1 for e in evs if e.get("state") == state)
            self.expect(got == n, "%d event(s) in state %r, expected %d (states: %s)"
                        % (got, state, n, json.dumps(count_by(evs, "state"))))
        for typ, n in spec.get("types", {}).items():
            got = sum(1 for e in evs if e.get("type") == typ)
            self.expect(got == n, "%d event(s) of type %r, expected %d" % (got, typ, n))
        if self.pb.starts == 1 and not self.non_webhook_events:
            # counters are per process: compare them only when paybridge never restarted,
            # and they count webhooks, not events written by the CLI or emitted by jobs
            m = self.metrics()
            acc = metric_sum(m, "paybridge_events_accepted_total")
            dup = metric_sum(m, "paybridge_events_duplicate_total")
            if "count" in spec:
                self.expect(acc == len(evs), "/metrics paybridge_events_accepted_total = %s, but %d event(s) are stored" % (acc, len(evs)))
            if "duplicates" in spec:
                self.expect(dup == spec["duplicates"], "/metrics paybridge_events_duplicate_total = %s, expected %d" % (dup, spec["duplicates"]))
        return "events: %d, duplicates %d, states %s" % (len(evs), dups, json.dumps(count_by(evs, "state")))

    def step_expect_metrics(self, spec, step):
        m = self.metrics()
        out = []
        for e in as_list(spec):
            v = metric_sum(m, e["metric"], e.get("labels"))
            label = "%s%s" % (e["metric"], json.dumps(e.get("labels", {})) if e.get("labels") else "")
            if not self.expect(v is not None, "/metrics has no %s" % label):
                continue
            if "min" in e:
                self.expect(v >= e["min"], "/metrics %s = %s, expected at least %s" % (label, v, e["min"]))
            if "max" in e:
                self.expect(v <= e["max"], "/metrics %s = %s, expected at most %s" % (label, v, e["max"]))
            if "equals" in e:
                self.expect(v == e["equals"], "/metrics %s = %s, expected %s" % (label, v, e["equals"]))
            out.append("%s=%g" % (label, v))
        return ", ".join(out)

    def step_expect_retry_gaps(self, spec, step):
        """Every attempt whose message mentions `message_contains` (e.g. "HTTP 429") must be
        followed by its job's next attempt no sooner than min_gap_ms after it ended."""
        needle = spec.get("message_contains", "HTTP 429")
        min_gap = int(spec["min_gap_ms"])
        seen, bad = 0, []
        for ev in self.events():
            detail = self.admin_get("/admin/events/%d" % ev["id"])
            for job in detail.get("jobs", []):
                atts = sorted(job.get("attempts_detail") or [], key=lambda a: a.get("attempt", 0))
                for a, nxt in zip(atts, atts[1:]):
                    if needle not in (a.get("message") or ""):
                        continue
                    seen += 1
                    gap = nxt["started_at"] - (a["started_at"] + (a.get("duration_ms") or 0))
                    if gap < min_gap:
                        bad.append("job %s (%s) attempt %d -> %d after %d ms (message: %s)"
                                   % (job.get("id"), job.get("step_name"), a["attempt"], nxt["attempt"], gap, a.get("message")))
        if "min_seen" in spec:
            self.expect(seen >= spec["min_seen"], "only %d attempt(s) failed with %r, expected at least %d"
                        % (seen, needle, spec["min_seen"]))
        if bad:
            self.fail("%d of %d retries after %r came sooner than %d ms:\n    %s"
                      % (len(bad), seen, needle, min_gap, "\n    ".join(bad[:6])))
        return "%d attempt(s) failed with %r, %d retried too soon" % (seen, needle, len(bad))

    def step_expect_health(self, spec, step):
        for path in ("/healthz", "/readyz"):
            status, _, body = http("GET", self.pb.url(path))
            self.expect(status == 200, "GET %s: HTTP %d %s" % (path, status, short(body)))
        return "healthy"

    def step_edit_flow(self, spec, step):
        self.apply_flow_edit(spec)
        if spec.get("restart", True):
            self.restart()
            return "flow edited, paybridge restarted"
        return "flow edited"

    def restart(self):
        problem = self.pb.stop()
        if problem:
            self.fail(problem + "\n" + self.tail(self.pb.logs[-1], 20))
        rc, out, err = self.cli("check", "-c", self.config_path)
        if rc != 0:
            raise Abort("`paybridge check` failed after the edit (rc %d):\n%s%s" % (rc, out, err))
        self.pb.start()

    def step_stop_paybridge(self, spec, step):
        """SIGTERM to paybridge (it must exit 0); CLI steps then work on the store alone."""
        problem = self.pb.stop()
        if problem:
            self.fail(problem + "\n" + self.tail(self.pb.logs[-1], 20))
        return "paybridge stopped"

    def step_start_paybridge(self, spec, step):
        if self.pb.proc is not None:
            raise Abort("start_paybridge: paybridge is already running")
        self.pb.start()
        return "paybridge started on :%d" % self.pb.port

    def step_restart(self, spec, step):
        spec = spec if isinstance(spec, dict) else {}
        for k in spec:
            if k != "wipe_store":
                raise CaseError("restart.%s: unknown key (known: wipe_store)" % k)
        if spec.get("wipe_store"):
            # a new paybridge installation in front of the same ERP: its store
            # (events, jobs, xref) is gone, the ERP keeps everything
            problem = self.pb.stop()
            if problem:
                self.fail(problem + "\n" + self.tail(self.pb.logs[-1], 20))
            removed = []
            for suffix in ("", "-wal", "-shm", "-journal"):
                path = os.path.join(self.dir, "pb.db" + suffix)
                if os.path.exists(path):
                    os.unlink(path)
                    removed.append(os.path.basename(path))
            self.store_generation += 1
            self.pb.start()
            return "paybridge restarted on :%d with an empty store (removed %s)" % (self.pb.port, ", ".join(removed))
        self.restart()
        return "paybridge restarted on :%d" % self.pb.port

    def step_dlq_replay(self, spec, step):
        what = "--all" if spec == "all" else str(spec)
        rc, out, err = self.cli("dlq", "replay", what, "-c", self.config_path)
        self.expect(rc == 0, "`paybridge dlq replay %s` failed (rc %d): %s" % (what, rc, err.strip()))
        m = re.search(r"replayed (\d+)", out)
        n = int(m.group(1)) if m else None
        if "expect_replayed" in step:
            self.expect(n == step["expect_replayed"], "`paybridge dlq replay` replayed %s, expected %d: %s"
                        % (n, step["expect_replayed"], out.strip()))
        return out.strip()

    def check_cli_output(self, what, rc, out, err, step, default_rc=0):
        """The expect_* modifiers of a CLI step: expect_rc, expect_stdout_contains,
        expect_stderr_contains (each a string or a list; stderr case-insensitive),
        expect_stdout_not_contains."""
        want = step.get("expect_rc", default_rc)
        self.expect(rc == want, "`paybridge %s`: rc %d, expected %d: %s%s" % (what, rc, want, err.strip()[:400],
                                                                        (" / stdout: " + out.strip()[:300]) if rc != want else ""))
        for needle in as_list(step.get("expect_stdout_contains", [])):
            self.expect(needle in out, "`paybridge %s` output does not contain %r:\n%s" % (what, needle, out[:1000]))
        for needle in as_list(step.get("expect_stdout_not_contains", [])):
            self.expect(needle not in out, "`paybridge %s` output contains %r:\n%s" % (what, needle, out[:1000]))
        for needle in as_list(step.get("expect_stderr_contains", [])):
            self.expect(needle.lower() in err.lower(), "`paybridge %s` stderr does not mention %r: %s" % (what, needle, err.strip()[:600]))

    def step_cli(self, args, step):
        """One CLI command against the case's config, e.g. ["events", "list"]."""
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise CaseError("cli: a list of argument strings, e.g. [\"events\", \"list\"]")
        args = [self.subst(a) for a in args]
        rc, out, err = self.cli(*(args + ["-c", self.config_path]))
        self.check_cli_output(" ".join(args), rc, out, err, step)
        return "`paybridge %s` rc %d, %d line(s)" % (" ".join(args), rc, len(out.splitlines()))

    def step_reconcile(self, spec, step):
        """`paybridge reconcile --connection C --date D`, then the run's JSON report
        checked: expect_counts (a subset of "counts", e.g. {"breaks_by_class":
        {"not_settled": 1}}), expect_breaks ([{"class", "order"}]: a break of that
        class whose merchant or gateway reference is the order code, or the
        gateway id of its payment), expect_journals (a subset of
        "journal_counts": posted, existing, held, failed), expect_revision."""
        known = {"connection", "date", "days_from_today", "expect_counts", "expect_breaks", "expect_journals",
                 "expect_revision", "expect_problems"}
        for k in spec:
            if k not in known:
                raise CaseError("reconcile.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        date = spec.get("date") or time.strftime("%Y-%m-%d", time.gmtime(time.time() + 86400 * int(spec.get("days_from_today", 0))))
        rc, out, err = self.cli("reconcile", "--connection", spec["connection"], "--date", date, "-c", self.config_path,
                                timeout=120)
        self.check_cli_output("reconcile %s %s" % (spec["connection"], date), rc, out, err, step)
        if rc != 0:
            return "reconcile failed: " + err.strip()[:200]
        m = re.search(r"^reports: (\S+) ", out, re.M)
        if not m:
            self.fail("`paybridge reconcile` printed no reports line:\n" + out[:800])
            return "no report"
        with open(m.group(1)) as f:
            report = json.load(f)
        self.last_report = report

        def subset(want, have, path):
            for k, v in want.items():
                if isinstance(v, dict):
                    subset(v, have.get(k, {}) if isinstance(have, dict) else {}, path + k + ".")
                else:
                    got = have.get(k, 0) if isinstance(have, dict) else None
                    self.expect(got == v, "reconcile %s %s: %s%s = %r, expected %r\n%s" % (spec["connection"], date, path, k, got, v, out[:1500]))
        subset(spec.get("expect_counts", {}), report.get("counts", {}), "counts.")
        subset(spec.get("expect_journals", {}), report.get("journal_counts", {}), "journal_counts.")
        if "expect_revision" in spec:
            self.expect(report.get("revision") == spec["expect_revision"],
                        "reconcile: revision %r, expected %r" % (report.get("revision"), spec["expect_revision"]))
        if "expect_problems" in spec:
            self.expect(len(report.get("problems", [])) == spec["expect_problems"],
                        "reconcile: %d problem(s), expected %d: %s" % (len(report.get("problems", [])), spec["expect_problems"],
                                                                     json.dumps(report.get("problems", []))[:800]))
        for want in spec.get("expect_breaks", []):
            names = {want["order"]}
            o = self.orders.get(want["order"], {})
            for k in ("transaction_id",):
                if o.get(k):
                    names.add(str(o[k]))
            found = [b for b in report.get("breaks", [])
                     if b.get("class") == want["class"] and (b.get("merchant_ref") in names or b.get("gateway_ref") in names)]
            self.expect(len(found) == 1, "reconcile: expected one %s break for %s, breaks are: %s" %
                        (want["class"], want["order"], json.dumps(report.get("breaks", []))[:1500]))
        # every journal balances, and a batch journal moves exactly the batch's
        # gross out of clearing, its fees to expense and its net to the bank
        batches = {b["batch_id"]: b for b in report.get("inputs", {}).get("batches", [])}
        for j in report.get("journals", []):
            if j.get("outcome") == "held":
                continue
            amounts = [l["amount_minor"] for l in j.get("lines", [])]
            self.expect(sum(amounts) == 0 and len(amounts) >= 2,
                        "reconcile: journal %s does not balance: %s" % (j.get("reference"), json.dumps(j)[:600]))
            if j.get("kind") == "batch" and j.get("batch_id") in batches:
                b = batches[j["batch_id"]]
                by = {l["description"]: l["amount_minor"] for l in j["lines"]}
                self.expect(by.get("net payout", 0) == b["net_minor"] and by.get("gateway fees", 0) == b["fees_minor"]
                            and by.get("gross settled out of clearing", 0) == -b["gross_minor"],
                            "reconcile: batch journal %s lines %s do not move the batch's gross %d, fees %d, net %d" %
                            (j.get("reference"), json.dumps(j["lines"]), b["gross_minor"], b["fees_minor"], b["net_minor"]))
        c = report.get("counts", {})
        return "%s %s rev %s: %s matches, %s breaks %s, journals %s" % (
            spec["connection"], date, report.get("revision"), c.get("matches"), c.get("breaks"),
            json.dumps(c.get("breaks_by_class")), json.dumps(report.get("journal_counts")))

    def step_expect_sandbox(self, spec, step):
        """GET an emulator's admin route and compare fields: {"system", "path",
        "fields": {"dotted.path": value}, "count": {"dotted.path": N} (array length)}."""
        known = {"system", "path", "fields", "count"}
        for k in spec:
            if k not in known:
                raise CaseError("expect_sandbox.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        system, path = spec.get("system"), spec.get("path", "")
        if system not in self.systems:
            raise CaseError("expect_sandbox.system: one of the case's systems (%s)" % ", ".join(self.systems))
        status, _, body = http("GET", self.sandbox.url(system, path))
        if status != 200:
            raise Abort("GET %s on %s: HTTP %d %s" % (path, system, status, short(body)))
        doc = json.loads(body)

        def at(d, dotted):
            for part in dotted.split("."):
                if isinstance(d, list):
                    d = d[int(part)] if part.isdigit() and int(part) < len(d) else None
                elif isinstance(d, dict):
                    d = d.get(part)
                else:
                    return None
            return d
        for k, v in spec.get("fields", {}).items():
            got = at(doc, k)
            self.expect(got == v, "%s %s: %s = %r, expected %r" % (system, path, k, got, v))
        for k, v in spec.get("count", {}).items():
            got = at(doc, k)
            n = len(got) if isinstance(got, (list, dict)) else None
            self.expect(n == v, "%s %s: %s has %r element(s), expected %r" % (system, path, k, n, v))
        return "%s %s checked" % (system, path)

    def subst(self, text):
        """{dir}, {today} (UTC, YYYY-MM-DD), {yesterday}, {tx:CODE} (the gateway
        transaction id of an order of this case) and the {sftp_*} names in a string."""
        text = self.conf_subst(text).replace("{today}", time.strftime("%Y-%m-%d", time.gmtime()))
        text = text.replace("{yesterday}", time.strftime("%Y-%m-%d", time.gmtime(time.time() - 86400)))

        def tx(m):
            o = self.orders.get(m.group(1))
            if not o or not o.get("transaction_id"):
                raise CaseError("{tx:%s}: no order %s with a transaction id in this case" % (m.group(1), m.group(1)))
            return str(o["transaction_id"])
        return re.sub(r"\{tx:([^}]+)\}", tx, text)

    def step_write_file(self, spec, step):
        """Write a file (e.g. a settlement report): {"path", "text" or "lines"}; substitutions as subst()."""
        known = {"path", "text", "lines"}
        for k in spec:
            if k not in known:
                raise CaseError("write_file.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        path = self.subst(spec["path"])
        if not path.startswith(self.dir + "/"):
            raise CaseError("write_file.path: must be under {dir}")
        text = self.subst(spec["text"] if "text" in spec else "".join(l + "\n" for l in spec["lines"]))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return "wrote %s (%d bytes)" % (path, len(text))

    def step_expect_files(self, spec, step):
        """A directory's files: {"dir", "names" (exactly its files not starting with
        '.', any order), "same_content_as" (a directory: each of them byte for byte
        equal to the file of that name there), "snapshot": LABEL (remember each
        file's inode, mtime and size), "unchanged_since": LABEL (every file of
        that snapshot is still the same inode with the same mtime and size:
        nobody wrote it again, since a writer replaces it by a rename),
        "lines_contain": {"name": ["text", ...]} (each text in some line)}."""
        known = {"dir", "names", "same_content_as", "snapshot", "unchanged_since", "lines_contain"}
        for k in spec:
            if k not in known:
                raise CaseError("expect_files.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        d = self.subst(spec["dir"])
        if not d.startswith(self.dir + "/"):
            raise CaseError("expect_files.dir: must be under {dir}")
        names = sorted(n for n in os.listdir(d) if not n.startswith(".")) if os.path.isdir(d) else []
        if "names" in spec:
            want = sorted(self.subst(n) for n in spec["names"])
            self.expect(names == want, "%s holds %s, expected %s" % (d, names, want))
        if "same_content_as" in spec:
            other = self.subst(spec["same_content_as"])
            for n in names:
                with open(os.path.join(d, n), "rb") as f:
                    mine = f.read()
                try:
                    with open(os.path.join(other, n), "rb") as f:
                        theirs = f.read()
                except OSError as e:
                    theirs = None
                    self.fail("%s/%s has no counterpart in %s: %s" % (d, n, other, e))
                if theirs is not None:
                    self.expect(mine == theirs, "%s/%s (%d bytes) differs from %s/%s (%d bytes)"
                                % (d, n, len(mine), other, n, len(theirs)))
        for n, texts in spec.get("lines_contain", {}).items():
            n = self.subst(n)
            try:
                with open(os.path.join(d, n)) as f:
                    lines = f.read().splitlines()
            except OSError as e:
                self.fail("%s/%s: %s" % (d, n, e))
                continue
            for t in as_list(texts):
                t = self.subst(t)
                self.expect(any(t in l for l in lines), "%s/%s has no line containing %r:\n%s"
                            % (d, n, t, "\n".join(lines)[:800]))

        def stat(path):
            st = os.stat(path)
            return (st.st_ino, st.st_mtime_ns, st.st_size)
        if "unchanged_since" in spec:
            label = spec["unchanged_since"]
            if label not in self.file_snapshots:
                raise CaseError("expect_files.unchanged_since: no earlier snapshot %r" % label)
            for path, was in sorted(self.file_snapshots[label].items()):
                now = stat(path) if os.path.exists(path) else None
                self.expect(now == was, "%s was written again since snapshot %r: (inode, mtime_ns, size) %r, was %r"
                            % (path, label, now, was))
        if "snapshot" in spec:
            self.file_snapshots[spec["snapshot"]] = {os.path.join(d, n): stat(os.path.join(d, n)) for n in names}
        return "%s: %s" % (d, ", ".join(names) or "(empty)")

    def step_admin(self, spec, step):
        """One admin API call with the case's key: {"method", "path", "body", "expect_status",
        "fields": {"dotted.path": value}, "wait_s": N (repeat until the fields hold)}."""
        known = {"method", "path", "body", "expect_status", "fields", "wait_s"}
        for k in spec:
            if k not in known:
                raise CaseError("admin.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        method, path = spec.get("method", "GET"), self.subst(spec["path"])
        body = json.loads(self.subst(json.dumps(spec["body"]))) if "body" in spec else None
        deadline = time.time() + float(spec.get("wait_s", 0))
        while True:
            status, _, resp = http(method, self.pb.url(path), body, {"Authorization": "Bearer " + self.admin_key})
            data = as_json(resp)
            bad = []
            if status != spec.get("expect_status", 200):
                bad.append("HTTP %d, expected %d" % (status, spec.get("expect_status", 200)))
            for k, v in spec.get("fields", {}).items():
                v = self.subst(v) if isinstance(v, str) else v
                d = data
                for part in k.split("."):
                    d = d.get(part) if isinstance(d, dict) else (d[int(part)] if isinstance(d, list) and part.isdigit() and int(part) < len(d) else None)
                if d != v:
                    bad.append("%s = %r, expected %r" % (k, d, v))
            if not bad or time.time() >= deadline:
                break
            time.sleep(0.2)
        self.expect(not bad, "%s %s: %s; body %s" % (method, path, "; ".join(bad), short(resp, 600)))
        return "%s %s -> %d %s" % (method, path, status, short(resp, 160))

    def step_cli_during(self, spec, step):
        """Run read-only CLI commands against the live store in a loop while orders are played."""
        known = {"commands", "orders", "extra_s"}
        for k in spec:
            if k not in known:
                raise CaseError("cli_during.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        commands = spec.get("commands", [["dlq", "list"], ["events", "list"]])
        stop = threading.Event()
        runs, bad = [0], []

        def loop():
            while not stop.is_set():
                for c in commands:
                    rc, out, err = self.cli(*(list(c) + ["-c", self.config_path]))
                    runs[0] += 1
                    if rc != 0:
                        bad.append("`paybridge %s` rc %d: %s" % (" ".join(c), rc, err.strip()[:200]))

        t = threading.Thread(target=loop, daemon=True)
        t.start()
        try:
            note = self.step_order(spec["orders"], step)
            time.sleep(float(spec.get("extra_s", 1.0)))
        finally:
            stop.set()
            t.join(30)
        for b in bad[:5]:
            self.fail(b)
        return "%s while the CLI ran %d command(s)" % (note, runs[0])

    def step_kill9_under_load(self, spec, step):
        known = {"orders", "kill_after_s", "down_s", "threads", "orders_per_s", "vendor_tx_code", "amount", "currency",
                 "customer", "card", "timeout_s"}
        for k in spec:
            if k not in known:
                raise CaseError("kill9_under_load.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        n = int(spec.get("orders", 200))
        kill_after = float(spec.get("kill_after_s", 1.5))
        down_s = float(spec.get("down_s", 0.5))
        threads = int(spec.get("threads", 8))
        base = spec.get("vendor_tx_code", "E2E-K9")
        order = {k: spec[k] for k in ("amount", "currency", "customer", "card") if k in spec}
        order["unique_customer"] = True
        codes = ["%s-%04d" % (base, i + 1) for i in range(n)]
        queue = list(reversed(codes))
        errors = []
        done_at_kill = [None]

        rate = float(spec.get("orders_per_s", 0))
        start = time.time()
        issued = [0]

        def worker():
            while True:
                with self.order_lock:
                    if not queue:
                        return
                    vtc = queue.pop()
                    k = issued[0]
                    issued[0] += 1
                if rate > 0:  # order k starts no earlier than k / rate seconds in
                    delay = start + k / rate - time.time()
                    if delay > 0:
                        time.sleep(delay)
                rec, err = self.play_order(order, vtc)
                with self.order_lock:
                    if rec:
                        self.orders[vtc] = rec
                    if err:
                        errors.append(err)

        pool = [threading.Thread(target=worker, daemon=True) for _ in range(threads)]
        for t in pool:
            t.start()
        time.sleep(kill_after)
        with self.order_lock:
            done_at_kill[0] = len(self.orders)
        acked_before = metric_sum(self.metrics(), "paybridge_events_accepted_total") or 0
        self.pb.kill9()
        self.say("SIGKILL after %.1f s: %d/%d orders played, %d event(s) acknowledged" % (kill_after, done_at_kill[0], n, acked_before))
        time.sleep(down_s)
        self.pb.start()
        recovered = [l for l in self.log_lines('"jobs.recovered"', 1) if l]
        m = re.search(r'"count":"(\d+)"', recovered[-1]) if recovered else None
        self.say("paybridge back on :%d; it re-queued %s job(s) the killed process had leased"
                 % (self.pb.port, m.group(1) if m else "no"))
        for t in pool:
            t.join(max(1, self.time_left()))
        for e in errors[:10]:
            self.fail("order under load: " + e)
        if done_at_kill[0] >= n:
            self.say("note: every order was played before the kill; the kill hit the processing, not the intake")
        self.settle(float(spec.get("timeout_s", 90)))
        st = self.sandbox_get("opayo", "/_sandbox/stats")
        self.expect(st["notifications_acknowledged"] >= len(self.orders),
                    "the gateway saw %d acknowledgement(s) for %d order(s)" % (st["notifications_acknowledged"], len(self.orders)))
        xs = self.sandbox_get("xero", "/_sandbox/stats")
        n_ok = len(self.ok_orders())
        self.expect(xs["invoices"] == n_ok, "Xero holds %d invoice(s) for %d authorised order(s)" % (xs["invoices"], n_ok))
        self.expect(xs["payments"] == n_ok, "Xero holds %d payment(s) for %d authorised order(s)" % (xs["payments"], n_ok))
        self.expect(xs["duplicate_invoice_references"] == 0, "Xero saw %d duplicate invoice reference(s)" % xs["duplicate_invoice_references"])
        self.expect(xs["duplicate_payment_references"] == 0, "Xero saw %d duplicate payment reference(s)" % xs["duplicate_payment_references"])
        self.check_every_order_once()
        evs = self.events()
        self.expect(len(evs) == len(self.orders), "paybridge stored %d event(s) for %d order(s)" % (len(evs), len(self.orders)))
        dead = [e for e in evs if e.get("state") == "dead"]
        self.expect(not dead, "%d event(s) dead-lettered after the kill: %s" % (len(dead), json.dumps(self.dlq()[:3])))
        return "%d orders, killed mid-load, all posted exactly once" % n

    # -- refunds and chargebacks --

    def payment_transaction(self, code, what):
        """(connection, transaction id) of an order's payment, as paybridge stored it: the
        payment.succeeded event (GET /admin/events/{id}) whose payment.reference is the order
        code, cross-checked against the gateway's own id for that order."""
        rec = self.orders.get(code)
        if not rec:
            raise CaseError("%s: no order %r was played in this case" % (what, code))
        conn = "opayo-shop" if rec["gateway"] == "opayo" else "paytrace-shop"
        found = []
        for ev in self.events():
            if ev.get("connection") != conn or ev.get("type") != "payment.succeeded":
                continue
            detail = self.admin_get("/admin/events/%d" % ev["id"])
            body = detail.get("event") or detail.get("event_json") or {}
            if isinstance(body, str):
                body = as_json(body) or {}
            if (body.get("payment") or {}).get("reference") == code:
                found.append(ev.get("gateway_event_id"))
        if len(found) != 1:
            raise Abort("%s: paybridge holds %d payment.succeeded event(s) for order %s on %s, expected 1"
                        % (what, len(found), code, conn))
        if found[0] != rec["transaction_id"]:
            self.fail("%s: paybridge's payment of %s is transaction %s, the gateway said %s"
                      % (what, code, found[0], rec["transaction_id"]))
        return conn, found[0]

    def stored_events_of(self, code):
        """paybridge's stored events (GET /admin/events/{id}) whose payment or order reference
        is the order code, as (summary, canonical event body, detail)."""
        out = []
        for ev in self.events():
            detail = self.admin_get("/admin/events/%d" % ev["id"])
            body = detail.get("event") or detail.get("event_json") or {}
            if isinstance(body, str):
                body = as_json(body) or {}
            if code in ((body.get("payment") or {}).get("reference"), (body.get("order") or {}).get("reference")):
                out.append((ev, body, detail))
        return out

    def step_expect_event(self, spec, step):
        """The canonical event paybridge stored for an order: its type, and fields by dotted path."""
        known = {"order", "type", "count", "fields", "fields_contain"}
        for k in spec:
            if k not in known:
                raise CaseError("expect_event.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        found = [(e, b, d) for e, b, d in self.stored_events_of(spec["order"])
                 if "type" not in spec or e.get("type") == spec["type"]]
        want_n = spec.get("count", 1)
        if not self.expect(len(found) == want_n, "paybridge stored %d %s event(s) of %s, expected %d"
                           % (len(found), spec.get("type", "any"), spec["order"], want_n)) or not found:
            return "no event"
        ev, body, _ = found[0]

        def get(path):
            v = body
            for k in path.split("."):
                v = v.get(k) if isinstance(v, dict) else None
            return v
        for path, want in spec.get("fields", {}).items():
            self.expect(get(path) == want, "event %s (%s): %s is %r, expected %r" % (ev["id"], ev.get("type"), path, get(path), want))
        for path, needle in spec.get("fields_contain", {}).items():
            got = get(path)
            self.expect(isinstance(got, str) and needle.lower() in got.lower(),
                        "event %s (%s): %s is %r, expected it to mention %r" % (ev["id"], ev.get("type"), path, got, needle))
        return "event %s %s of %s" % (ev["id"], ev.get("type"), spec["order"])

    def step_refund(self, spec, step):
        """`paybridge refund --connection C --transaction T --amount A [--reason R] [--reference REF]`
        for the payment of an order played in this case."""
        known = {"order", "order_transaction_of", "amount", "reason", "reference", "connection", "transaction", "via"}
        for k in spec:
            if k not in known:
                raise CaseError("refund.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        if "order" in spec:
            conn, tx = self.payment_transaction(spec["order"], "refund")
        elif "order_transaction_of" in spec:
            # paybridge may be stopped: the gateway's id of the order, as the sandbox reported it
            rec = self.orders.get(spec["order_transaction_of"])
            if not rec:
                raise CaseError("refund: no order %r was played" % spec["order_transaction_of"])
            conn = "opayo-shop" if rec["gateway"] == "opayo" else "paytrace-shop"
            tx = rec["transaction_id"]
        elif "transaction" in spec and "connection" in spec:
            conn, tx = spec["connection"], spec["transaction"]
        else:
            raise CaseError("refund: needs \"order\" (or \"connection\" and \"transaction\")")
        conn = spec.get("connection", conn)
        if spec.get("via", "cli") == "admin":
            return self.refund_via_admin(conn, tx, spec, step)
        if spec.get("via", "cli") != "cli":
            raise CaseError("refund.via: \"cli\" (default) or \"admin\"")
        for k in ("expect_status", "expect_message_contains"):
            if k in step:
                raise CaseError("refund: %s is for \"via\": \"admin\"" % k)
        args = ["refund", "--connection", conn, "--transaction", tx, "--amount", str(spec["amount"])]
        if "reason" in spec:
            args += ["--reason", spec["reason"]]
        if "reference" in spec:
            args += ["--reference", spec["reference"]]
        args = [self.subst(a) for a in args]
        rc, out, err = self.cli(*(args + ["-c", self.config_path]))
        self.check_cli_output(" ".join(args), rc, out, err, step)
        if rc == 0:
            self.non_webhook_events = True
            res = as_json(out)
            if not self.expect(isinstance(res, dict) and "request_id" in res,
                               "`paybridge refund` printed no request JSON: %s" % short(out)):
                return "refund: rc 0, %s" % short(out)
            if "expect_refundable_minor" in step:
                self.expect(res.get("refundable_minor") == step["expect_refundable_minor"],
                            "`paybridge refund`: refundable_minor %s, expected %s (%s)"
                            % (res.get("refundable_minor"), step["expect_refundable_minor"], short(out)))
            if "expect_duplicate" in step:
                self.expect(res.get("duplicate") is step["expect_duplicate"],
                            "`paybridge refund`: duplicate %s, expected %s" % (res.get("duplicate"), step["expect_duplicate"]))
            return "refund %s of %s (%s): request %s, reference %s, %s minor units were refundable" % (
                spec["amount"], tx, conn, res.get("request_id"), res.get("reference"), res.get("refundable_minor"))
        return "refund %s of %s refused (rc %d): %s" % (spec["amount"], tx, rc, err.strip()[:300])

    def refund_via_admin(self, conn, tx, spec, step):
        """POST /admin/refunds {connection, transaction, amount, reason?, reference?}."""
        body = {"connection": conn, "transaction": tx, "amount": str(spec["amount"])}
        for k in ("reason", "reference"):
            if k in spec:
                body[k] = spec[k]
        status, _, resp = http("POST", self.pb.url("/admin/refunds"), body,
                               {"Authorization": "Bearer " + self.admin_key})
        data = as_json(resp)
        want = step.get("expect_status", 201)
        self.expect(status == want, "POST /admin/refunds: HTTP %d, expected %d: %s" % (status, want, short(resp)))
        if status >= 400:
            err = data.get("error") if isinstance(data, dict) else None
            if self.expect(isinstance(err, dict) and isinstance(err.get("message"), str),
                           "POST /admin/refunds: the reply is not {\"error\":{\"code\",\"message\"}}: %s" % short(resp)):
                for needle in as_list(step.get("expect_message_contains", [])):
                    self.expect(needle.lower() in err["message"].lower(),
                                "POST /admin/refunds: error message %r does not mention %r" % (err["message"], needle))
            return "POST /admin/refunds %s of %s -> %d %s" % (spec["amount"], tx, status, short(resp, 300))
        self.non_webhook_events = True
        if "expect_refundable_minor" in step:
            self.expect(isinstance(data, dict) and data.get("refundable_minor") == step["expect_refundable_minor"],
                        "POST /admin/refunds: refundable_minor %s, expected %s" % ((data or {}).get("refundable_minor"),
                                                                                  step["expect_refundable_minor"]))
        if "expect_duplicate" in step:
            self.expect(isinstance(data, dict) and data.get("duplicate") is step["expect_duplicate"],
                        "POST /admin/refunds: duplicate %s, expected %s" % ((data or {}).get("duplicate"), step["expect_duplicate"]))
        return "POST /admin/refunds %s of %s -> %d %s" % (spec["amount"], tx, status, short(resp, 200))

    def step_chargeback(self, spec, step):
        """`paybridge chargebacks open|update` for an order of this case."""
        if "open" in spec:
            o = spec["open"]
            known = {"order", "amount", "reason", "deadline"}
            for k in o:
                if k not in known:
                    raise CaseError("chargeback.open.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
            conn, tx = self.payment_transaction(o["order"], "chargeback")
            args = ["chargebacks", "open", "--connection", conn, "--transaction", tx, "--amount", str(o["amount"]),
                    "--reason", str(o.get("reason", "4837")), "--deadline", o.get("deadline", "2030-01-31")]
        elif "update" in spec:
            ref = spec["update"]
            if ref in ("first", "last"):
                if not self.chargebacks:
                    raise Abort("chargeback update: no chargeback was opened in this case")
                ref = self.chargebacks[0 if ref == "first" else -1]
            if "state" not in spec:
                raise CaseError("chargeback.update needs \"state\"")
            args = ["chargebacks", "update", str(ref), "--state", spec["state"]]
        else:
            raise CaseError("chargeback: {\"open\": {...}} or {\"update\": ID|\"first\"|\"last\", \"state\": S}")
        args = [self.subst(a) for a in args]
        rc, out, err = self.cli(*(args + ["-c", self.config_path]))
        self.check_cli_output(" ".join(args), rc, out, err, step)
        if rc == 0:
            self.non_webhook_events = True
            res = as_json(out) or {}
            if "open" in spec and res.get("chargeback_id"):
                self.chargebacks.append(res["chargeback_id"])
            return "`paybridge %s`: %s" % (" ".join(args[:2]), short(out.strip(), 200))
        return "`paybridge %s` refused (rc %d): %s" % (" ".join(args[:2]), rc, err.strip()[:300])

    def step_expect_chargebacks(self, spec, step):
        """GET /admin/chargebacks and `paybridge chargebacks list`: count, states, and the list
        ordered by dispute deadline (nearest first) in both."""
        known = {"count", "states", "deadlines"}
        for k in spec:
            if k not in known:
                raise CaseError("expect_chargebacks.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        cbs = self.admin_get("/admin/chargebacks")
        if "count" in spec:
            self.expect(len(cbs) == spec["count"], "paybridge holds %d chargeback(s), expected %d: %s"
                        % (len(cbs), spec["count"], json.dumps(cbs)[:500]))
        for state, n in spec.get("states", {}).items():
            got = sum(1 for c in cbs if c.get("state") == state)
            self.expect(got == n, "%d chargeback(s) in state %r, expected %d (%s)" % (got, state, n, json.dumps(count_by(cbs, "state"))))
        api_deadlines = [c.get("deadline") for c in cbs]
        # open disputes first, nearest deadline first; closed ones (won, lost) after them
        order = [(c.get("state") in ("won", "lost"), c.get("deadline")) for c in cbs]
        self.expect(order == sorted(order), "GET /admin/chargebacks is not open disputes first, nearest deadline first: %s"
                    % [(c.get("state"), c.get("deadline")) for c in cbs])
        if "deadlines" in spec:
            self.expect(api_deadlines == spec["deadlines"], "GET /admin/chargebacks deadlines %s, expected %s" % (api_deadlines, spec["deadlines"]))
        rc, out, err = self.cli("chargebacks", "list", "-c", self.config_path)
        if self.expect(rc == 0, "`paybridge chargebacks list` failed (rc %d): %s" % (rc, err.strip())):
            rows = [l for l in out.splitlines()[1:] if l.strip()]
            cli_deadlines = [l.split()[1] if len(l.split()) > 1 else None for l in rows]
            self.expect(cli_deadlines == api_deadlines, "`paybridge chargebacks list` shows deadlines %s, the admin API %s:\n%s"
                        % (cli_deadlines, api_deadlines, out))
            for c in cbs:
                row = next((l for l in rows if l.split()[0] == str(c.get("id"))), "")
                self.expect(c.get("state", "?") in row.split() and c.get("original_gateway_id", "?") in row,
                            "`paybridge chargebacks list`: the row of chargeback %s does not show its state %s and payment %s: %r"
                            % (c.get("id"), c.get("state"), c.get("original_gateway_id"), row))
        return "chargebacks: %d %s, deadlines %s" % (len(cbs), json.dumps(count_by(cbs, "state")), api_deadlines)

    def step_expect_refunds(self, spec, step):
        """The gateway's refund transactions of an order, and paybridge's refund requests
        (GET /admin/refunds) of its payment."""
        known = {"order", "gateway_count", "gateway_total_minor", "requests", "request_states"}
        for k in spec:
            if k not in known:
                raise CaseError("expect_refunds.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        rec = self.orders.get(spec["order"])
        if not rec:
            raise CaseError("expect_refunds: no order %r was played" % spec["order"])
        tx = rec["transaction_id"]
        if rec["gateway"] == "opayo":
            refunds = [t for t in self.sandbox_get("opayo", "/_sandbox/transactions")
                       if t.get("transactionType") == "Refund" and t.get("referenceTransactionId") == tx
                       and t.get("status") == "Ok"]
            total = sum(int((t.get("amount") or {}).get("totalAmount", 0)) for t in refunds)
        else:
            refunds = [t for t in self.sandbox_get("paytrace", "/_sandbox/transactions")
                       if t.get("transaction_type") == "REFUND" and str(t.get("original_transaction_id")) == tx
                       and t.get("success") and not t.get("voided")]
            total = sum(to_minor(Decimal(str(t.get("amount"))), "USD") or 0 for t in refunds)
        if "gateway_count" in spec:
            self.expect(len(refunds) == spec["gateway_count"], "the %s gateway holds %d approved refund(s) of %s (%s), expected %d"
                        % (rec["gateway"], len(refunds), spec["order"], tx, spec["gateway_count"]))
        if "gateway_total_minor" in spec:
            self.expect(total == spec["gateway_total_minor"], "the %s gateway refunded %d minor units of %s, expected %d"
                        % (rec["gateway"], total, spec["order"], spec["gateway_total_minor"]))
        reqs = [r for r in self.admin_get("/admin/refunds") if r.get("original_gateway_id") == tx]
        if "requests" in spec:
            self.expect(len(reqs) == spec["requests"], "paybridge holds %d refund request(s) for %s, expected %d: %s"
                        % (len(reqs), tx, spec["requests"], json.dumps(reqs)[:600]))
        for state, n in spec.get("request_states", {}).items():
            got = sum(1 for r in reqs if r.get("state") == state)
            self.expect(got == n, "%d refund request(s) of %s in state %r, expected %d (%s)"
                        % (got, tx, state, n, json.dumps(count_by(reqs, "state"))))
        return "%s: %d gateway refund(s), %d minor units; %d request(s) %s" % (
            spec["order"], len(refunds), total, len(reqs), json.dumps(count_by(reqs, "state")))

    def step_expect_stats(self, spec, step):
        """An emulator's /_sandbox/stats counters: {"system": S, "counter": N or {"min","max"}}."""
        spec = dict(spec)
        system = spec.pop("system", None)
        if system not in self.systems:
            raise CaseError("expect_stats.system: one of the case's systems (%s)" % ", ".join(self.systems))
        st = self.sandbox_get(system, "/_sandbox/stats")
        out = []
        for key, want in spec.items():
            if key not in st:
                raise CaseError("expect_stats: the %s sandbox has no counter %r (it has %s)" % (system, key, ", ".join(sorted(st))))
            got = st[key]
            if isinstance(want, dict):
                if "min" in want:
                    self.expect(got >= want["min"], "%s stats: %s = %s, expected at least %s" % (system, key, got, want["min"]))
                if "max" in want:
                    self.expect(got <= want["max"], "%s stats: %s = %s, expected at most %s" % (system, key, got, want["max"]))
            else:
                self.expect(got == want, "%s stats: %s = %s, expected %s" % (system, key, got, want))
            out.append("%s=%s" % (key, json.dumps(got)))
        return "%s: %s" % (system, ", ".join(out))

    # -- SYSPRO --

    def step_expect_syspro(self, spec, step):
        known = {"sales_orders", "ar_payments", "credit_notes", "customers", "customers_added", "business_errors",
                 "duplicate_customer_po_numbers", "order", "no_order", "payment", "credit_note",
                 "credit_note_values_minor", "credit_notes_customer_of", "every_order_posted_once",
                 "userid_missing_spaces"}
        for k in spec:
            if k not in known:
                raise CaseError("expect_syspro.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        st = self.sandbox_get("syspro", "/_sandbox/stats")
        for key in ("sales_orders", "ar_payments", "credit_notes", "customers", "customers_added", "business_errors"):
            if key in spec:
                self.expect(st[key] == spec[key], "SYSPRO stats: %s = %d, expected %d" % (key, st[key], spec[key]))
        for key in ("duplicate_customer_po_numbers", "userid_missing_spaces"):
            want = spec.get(key, 0)
            self.expect(st[key] == want, "SYSPRO stats: %s = %d, expected %d" % (key, st[key], want))
        orders = self.sandbox_get("syspro", "/_sandbox/orders")
        ledger = self.sandbox_get("syspro", "/_sandbox/ledger")
        for want in as_list(spec.get("order", [])):
            self.check_syspro_order(want, orders, ledger)
        for po in as_list(spec.get("no_order", [])):
            n = sum(1 for o in orders if o.get("CustomerPoNumber") == po)
            self.expect(n == 0, "SYSPRO holds %d sales order(s) with CustomerPoNumber %r, expected none" % (n, po))
        for want in as_list(spec.get("payment", [])):
            self.check_syspro_ledger("ar_payments", "AR payment", "PaymentValue", want, orders, ledger)
        for want in as_list(spec.get("credit_note", [])):
            self.check_syspro_ledger("credit_notes", "credit note", "InvoiceValue", want, orders, ledger)
        cns = ledger.get("credit_notes", [])
        if "credit_note_values_minor" in spec:
            got = [c.get("value_minor") for c in cns]
            self.expect(got == spec["credit_note_values_minor"], "SYSPRO credit note values %s minor units, expected %s: %s"
                        % (got, spec["credit_note_values_minor"], json.dumps(cns)[:400]))
        if "credit_notes_customer_of" in spec:
            so = [o for o in orders if o.get("CustomerPoNumber") == spec["credit_notes_customer_of"]]
            cust = so[0].get("Customer") if so else None
            got = sorted({c.get("Customer") for c in cns})
            self.expect(got == [cust], "SYSPRO credit notes are on customer(s) %s, expected the customer of %s (%r)"
                        % (got, spec["credit_notes_customer_of"], cust))
        if spec.get("every_order_posted_once"):
            self.check_syspro_every_order(orders, ledger)
        return "SYSPRO: %d customer(s) added, %d sales order(s), %d AR payment(s), %d credit note(s), %d business error(s)" % (
            st["customers_added"], st["sales_orders"], st["ar_payments"], st["credit_notes"], st["business_errors"])

    def check_syspro_order(self, want, orders, ledger):
        known = {"customer_po_number", "count", "payment_status", "on_hold", "order_status", "value_minor", "customer",
                 "same_customer_as", "email", "customer_name", "stock_codes", "line_types", "comment_contains"}
        for k in want:
            if k not in known:
                raise CaseError("expect_syspro.order.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        po = want["customer_po_number"]
        found = [o for o in orders if o.get("CustomerPoNumber") == po]
        if not self.expect(len(found) == want.get("count", 1), "SYSPRO holds %d sales order(s) with CustomerPoNumber %r, expected %d"
                           % (len(found), po, want.get("count", 1))) or not found:
            return
        o = found[0]
        hdr = o.get("Header") or {}
        what = "SYSPRO sales order %s (%s)" % (o.get("SalesOrder"), po)
        if "payment_status" in want:
            self.expect(hdr.get("PaymentStatus") == want["payment_status"], "%s: PaymentStatus %r, expected %r"
                        % (what, hdr.get("PaymentStatus"), want["payment_status"]))
        if "on_hold" in want:
            self.expect(o.get("OnHold") is want["on_hold"], "%s: on hold %r (OrderStatus %r), expected %r"
                        % (what, o.get("OnHold"), o.get("OrderStatus"), want["on_hold"]))
        if "order_status" in want:
            self.expect(o.get("OrderStatus") == want["order_status"], "%s: OrderStatus %r, expected %r"
                        % (what, o.get("OrderStatus"), want["order_status"]))
        if "value_minor" in want:
            self.expect(o.get("value_minor") == want["value_minor"], "%s: value %s (%s minor units), expected %d"
                        % (what, o.get("OrderValue"), o.get("value_minor"), want["value_minor"]))
        if "customer" in want:
            self.expect(o.get("Customer") == want["customer"], "%s: customer %r, expected %r" % (what, o.get("Customer"), want["customer"]))
        if "same_customer_as" in want:
            other = [x for x in orders if x.get("CustomerPoNumber") == want["same_customer_as"]]
            self.expect(other and other[0].get("Customer") == o.get("Customer"), "%s: customer %r, not the customer of %s (%r)"
                        % (what, o.get("Customer"), want["same_customer_as"], other[0].get("Customer") if other else None))
        if "email" in want:
            self.expect(hdr.get("Email") == want["email"], "%s: Email %r, expected %r" % (what, hdr.get("Email"), want["email"]))
            cust = (ledger.get("customers") or {}).get(o.get("Customer")) or {}
            self.expect(cust.get("Email") == want["email"], "%s: the customer %s has Email %r, expected %r"
                        % (what, o.get("Customer"), cust.get("Email"), want["email"]))
        if "customer_name" in want:
            cust = (ledger.get("customers") or {}).get(o.get("Customer")) or {}
            self.expect(cust.get("Name") == want["customer_name"], "%s: the customer %s is named %r, expected %r"
                        % (what, o.get("Customer"), cust.get("Name"), want["customer_name"]))
        lines = o.get("Lines") or []
        if "stock_codes" in want:
            codes = [l.get("StockCode") for l in lines if l.get("StockCode")]
            self.expect(codes == want["stock_codes"], "%s: stock lines %s, expected %s" % (what, codes, want["stock_codes"]))
        if "line_types" in want:
            types = [l.get("LineType", "StockLine") for l in lines]
            self.expect(types == want["line_types"], "%s: line types %s, expected %s" % (what, types, want["line_types"]))
        for needle in as_list(want.get("comment_contains", [])):
            comments = [l.get("Comment", "") for l in lines if l.get("LineType") == "CommentLine"]
            self.expect(any(needle in c for c in comments), "%s: no comment line mentions %r (comments: %s)" % (what, needle, comments))

    def check_syspro_ledger(self, kind, label, value_field, want, orders, ledger):
        known = {"reference", "count", "value_minor", "customer", "same_customer_as", "bank"}
        for k in want:
            if k not in known:
                raise CaseError("expect_syspro.%s.%s: unknown key (known: %s)" % (label, k, ", ".join(sorted(known))))
        ref = want["reference"]
        found = [r for r in ledger.get(kind, []) if r.get("Reference") == ref]
        if not self.expect(len(found) == want.get("count", 1), "SYSPRO holds %d %s(s) with Reference %r, expected %d: %s"
                           % (len(found), label, ref, want.get("count", 1), json.dumps(found)[:400])) or not found:
            return
        r = found[0]
        what = "SYSPRO %s %s" % (label, ref)
        if "value_minor" in want:
            self.expect(r.get("value_minor") == want["value_minor"], "%s: %s %s (%s minor units), expected %d"
                        % (what, value_field, r.get(value_field), r.get("value_minor"), want["value_minor"]))
        if "customer" in want:
            self.expect(r.get("Customer") == want["customer"], "%s: customer %r, expected %r" % (what, r.get("Customer"), want["customer"]))
        if "same_customer_as" in want:
            other = [o for o in orders if o.get("CustomerPoNumber") == want["same_customer_as"]]
            self.expect(other and other[0].get("Customer") == r.get("Customer"), "%s: customer %r, not the customer of order %s (%r)"
                        % (what, r.get("Customer"), want["same_customer_as"], other[0].get("Customer") if other else None))
        if "bank" in want:
            self.expect(r.get("Bank") == want["bank"], "%s: Bank %r, expected %r" % (what, r.get("Bank"), want["bank"]))

    def check_syspro_every_order(self, orders, ledger):
        """Each authorised Opayo order: exactly one sales order (CustomerPoNumber = vendorTxCode,
        PaymentStatus Paid, value = amount) and one AR payment (Reference = vendorTxCode, value =
        amount, the order's customer); each other order: nothing; nothing else."""
        by_po, pays = {}, {}
        for o in orders:
            by_po.setdefault(o.get("CustomerPoNumber"), []).append(o)
        for p in ledger.get("ar_payments", []):
            pays.setdefault(p.get("Reference"), []).append(p)
        mine = self.gateway_orders("opayo")
        bad = []
        for vtc, o in sorted(mine.items()):
            sos, ps = by_po.get(vtc, []), pays.get(vtc, [])
            if o["status"] != "Ok":
                if sos or ps:
                    bad.append("%s (%s): %d order(s), %d payment(s), expected none" % (vtc, o["status"], len(sos), len(ps)))
                continue
            if len(sos) != 1:
                bad.append("%s: %d sales order(s), expected exactly 1" % (vtc, len(sos)))
            if len(ps) != 1:
                bad.append("%s: %d AR payment(s), expected exactly 1" % (vtc, len(ps)))
            if len(sos) == 1:
                so = sos[0]
                if so.get("value_minor") != o["amount"]:
                    bad.append("%s: order value %s, expected %d minor units" % (vtc, so.get("OrderValue"), o["amount"]))
                if (so.get("Header") or {}).get("PaymentStatus") != "Paid":
                    bad.append("%s: PaymentStatus %r, expected Paid" % (vtc, (so.get("Header") or {}).get("PaymentStatus")))
                if len(ps) == 1 and ps[0].get("Customer") != so.get("Customer"):
                    bad.append("%s: payment on customer %s, order on %s" % (vtc, ps[0].get("Customer"), so.get("Customer")))
            if len(ps) == 1 and ps[0].get("value_minor") != o["amount"]:
                bad.append("%s: payment %s, expected %d minor units" % (vtc, ps[0].get("PaymentValue"), o["amount"]))
        strays = [po for po in by_po if po not in mine] + [r for r in pays if r not in mine]
        if strays:
            bad.append("records with references no order had: %s" % ", ".join(map(str, strays[:5])))
        for b in bad[:20]:
            self.fail("SYSPRO exactly once: " + b)
        n_ok = len(self.ok_orders("opayo"))
        self.say("SYSPRO exactly once: %d authorised order(s), %d sales order(s), %d AR payment(s)"
                 % (n_ok, len(orders), len(ledger.get("ar_payments", []))))

    # -- Sage X3 --

    def step_expect_sagex3(self, spec, step):
        known = {"customers", "sales_orders", "allocations", "payments", "journals", "duplicate_references",
                 "duplicate_keys_refused", "modifications", "order", "no_order", "payment", "journal", "customer",
                 "journal_amounts", "every_order_posted_once", "stock"}
        for k in spec:
            if k not in known:
                raise CaseError("expect_sagex3.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        st = self.sandbox_get("sagex3", "/_sandbox/stats")
        for key in ("customers", "sales_orders", "allocations", "payments", "journals", "duplicate_keys_refused",
                    "modifications"):
            if key in spec:
                self.expect(st[key] == spec[key], "Sage X3 stats: %s = %d, expected %d" % (key, st[key], spec[key]))
        want = spec.get("duplicate_references", 0)
        self.expect(st["duplicate_references"] == want, "Sage X3 stats: duplicate_references = %d, expected %d"
                    % (st["duplicate_references"], want))
        recs = self.sandbox_get("sagex3", "/_sandbox/records")
        for w in as_list(spec.get("customer", [])):
            self.check_x3_customer(w, recs)
        for w in as_list(spec.get("order", [])):
            self.check_x3_order(w, recs)
        for ref in as_list(spec.get("no_order", [])):
            n = sum(1 for o in recs.get("sales_orders", []) if o.get("reference") == ref)
            self.expect(n == 0, "Sage X3 holds %d SOH with reference %r, expected none" % (n, ref))
        for w in as_list(spec.get("payment", [])):
            self.check_x3_payment(w, recs)
        for w in as_list(spec.get("journal", [])):
            self.check_x3_journal(w, recs)
        if "journal_amounts" in spec:
            # each journal's total, in the order saved, and balanced
            got = []
            for j in recs.get("journals", []):
                lines = self.x3_table(j["record"])
                deb = sum((Decimal(l["DEB"]) for l in lines if l.get("DEB")), Decimal(0))
                cdt = sum((Decimal(l["CDT"]) for l in lines if l.get("CDT")), Decimal(0))
                got.append(str(deb) if deb == cdt else "%s/%s unbalanced" % (deb, cdt))
            self.expect(got == spec["journal_amounts"], "Sage X3 journal amounts %s, expected %s" % (got, spec["journal_amounts"]))
        for item, qty in spec.get("stock", {}).items():
            got = (recs.get("stock") or {}).get(item)
            self.expect(got is not None and Decimal(got) == Decimal(str(qty)), "Sage X3 stock of %s: %s, expected %s" % (item, got, qty))
        if spec.get("every_order_posted_once"):
            self.check_x3_every_order(recs)
        return ("Sage X3: %d BPC, %d SOH, %d allocation(s), %d PAY, %d GACC, %d duplicate reference(s), "
                "%d save(s) refused as an existing key, %d refusal(s)") % (
            st["customers"], st["sales_orders"], st["allocations"], st["payments"], st["journals"],
            st["duplicate_references"], st["duplicate_keys_refused"], st["refusals"])

    @staticmethod
    def x3_field(record, name):
        """A field by NAME in any group of an X3 record (the emulator's JSON form)."""
        for grp in (record or {}).values():
            if isinstance(grp, dict) and name in grp:
                return grp[name]
        return None

    @staticmethod
    def x3_table(record):
        for grp in (record or {}).values():
            if isinstance(grp, list):
                return grp
        return []

    def x3_order_of(self, code, recs):
        return [o for o in recs.get("sales_orders", []) if o.get("reference") == code]

    def check_x3_customer(self, want, recs):
        known = {"of_order", "name", "email", "count"}
        for k in want:
            if k not in known:
                raise CaseError("expect_sagex3.customer.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        custs = recs.get("customers", [])
        if "of_order" in want:
            sohs = self.x3_order_of(want["of_order"], recs)
            if not self.expect(len(sohs) == 1, "Sage X3: no single SOH for %s to find its customer" % want["of_order"]):
                return
            num = self.x3_field(sohs[0]["record"], "BPCORD")
            found = [c for c in custs if c.get("number") == num]
        else:
            found = [c for c in custs if self.x3_field(c["record"], "WEB") == want.get("email")]
        if not self.expect(len(found) == want.get("count", 1), "Sage X3 holds %d matching BPC(s) for %s, expected %d"
                           % (len(found), json.dumps(want), want.get("count", 1))) or not found:
            return
        c = found[0]["record"]
        if "name" in want:
            self.expect(self.x3_field(c, "BPCNAM") == want["name"], "Sage X3 BPC %s: BPCNAM %r, expected %r"
                        % (found[0].get("number"), self.x3_field(c, "BPCNAM"), want["name"]))
        if "email" in want:
            self.expect(self.x3_field(c, "WEB") == want["email"], "Sage X3 BPC %s: WEB %r, expected %r"
                        % (found[0].get("number"), self.x3_field(c, "WEB"), want["email"]))

    def check_x3_order(self, want, recs):
        known = {"reference", "count", "lines", "site", "allocated", "same_customer_as", "currency", "payments"}
        for k in want:
            if k not in known:
                raise CaseError("expect_sagex3.order.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        ref = want["reference"]
        found = self.x3_order_of(ref, recs)
        if not self.expect(len(found) == want.get("count", 1), "Sage X3 holds %d SOH with reference %r, expected %d"
                           % (len(found), ref, want.get("count", 1))) or not found:
            return
        o = found[0]
        rec = o["record"]
        what = "Sage X3 SOH %s (%s)" % (o.get("number"), ref)
        if "lines" in want:
            got = [{k: l.get(k) for k in ("ITMREF", "QTY", "GROPRI")} for l in self.x3_table(rec)]
            self.expect(got == want["lines"], "%s: lines %s, expected %s" % (what, json.dumps(got), json.dumps(want["lines"])))
        if "site" in want:
            self.expect(self.x3_field(rec, "SALFCY") == want["site"], "%s: SALFCY %r, expected %r"
                        % (what, self.x3_field(rec, "SALFCY"), want["site"]))
        if "currency" in want:
            self.expect(self.x3_field(rec, "CUR") == want["currency"], "%s: CUR %r, expected %r"
                        % (what, self.x3_field(rec, "CUR"), want["currency"]))
        if "allocated" in want:
            self.expect(bool(o.get("allocation")) is want["allocated"], "%s: allocation %r, expected allocated=%r"
                        % (what, o.get("allocation"), want["allocated"]))
        if "payments" in want:
            self.expect(len(o.get("payments") or []) == want["payments"], "%s: %d PAY linked, expected %d"
                        % (what, len(o.get("payments") or []), want["payments"]))
        if "same_customer_as" in want:
            other = self.x3_order_of(want["same_customer_as"], recs)
            a = self.x3_field(rec, "BPCORD")
            b = self.x3_field(other[0]["record"], "BPCORD") if other else None
            self.expect(a == b, "%s: customer %r, not the customer of %s (%r)" % (what, a, want["same_customer_as"], b))

    def check_x3_payment(self, want, recs):
        known = {"order", "reference", "count", "paytyp", "amount", "currency", "account"}
        for k in want:
            if k not in known:
                raise CaseError("expect_sagex3.payment.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        if "order" in want:
            rec = self.orders.get(want["order"])
            if not rec:
                raise CaseError("expect_sagex3.payment.order: no order %r was played" % want["order"])
            ref = rec["transaction_id"]
        else:
            ref = want["reference"]
        found = [p for p in recs.get("payments", []) if p.get("reference") == ref]
        if not self.expect(len(found) == want.get("count", 1), "Sage X3 holds %d PAY with REF %r, expected %d"
                           % (len(found), ref, want.get("count", 1))) or not found:
            return
        p = found[0]
        r = p["record"]
        what = "Sage X3 PAY %s (REF %s)" % (p.get("number"), ref)
        self.expect(self.x3_field(r, "REF") == ref, "%s: REF field %r" % (what, self.x3_field(r, "REF")))
        for key, field in (("paytyp", "PAYTYP"), ("currency", "CUR"), ("account", "ACC")):
            if key in want:
                self.expect(self.x3_field(r, field) == want[key], "%s: %s %r, expected %r" % (what, field, self.x3_field(r, field), want[key]))
        if "amount" in want:
            got = self.x3_field(r, "AMTCUR")
            self.expect(got is not None and Decimal(got) == Decimal(want["amount"]) and got == want["amount"],
                        "%s: AMTCUR %r, expected %r" % (what, got, want["amount"]))
        if "order" in want:
            sohs = self.x3_order_of(want["order"], recs)
            self.expect(sohs and p.get("order") == sohs[0].get("number") and self.x3_field(r, "SOHNUM") == sohs[0].get("number"),
                        "%s: linked to order %r (SOHNUM %r), expected the SOH of %s (%s)"
                        % (what, p.get("order"), self.x3_field(r, "SOHNUM"), want["order"], sohs[0].get("number") if sohs else None))
            bpr = self.x3_field(r, "BPR")
            if sohs:
                self.expect(bpr == self.x3_field(sohs[0]["record"], "BPCORD"), "%s: BPR %r, the order's customer is %r"
                            % (what, bpr, self.x3_field(sohs[0]["record"], "BPCORD")))

    def check_x3_journal(self, want, recs):
        known = {"reference", "refund_of", "count", "amount", "debit_account", "credit_account", "currency",
                 "same_customer_as"}
        for k in want:
            if k not in known:
                raise CaseError("expect_sagex3.journal.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        if "refund_of" in want:
            # one GACC per approved PayTrace refund of that sale, REF = the refund's transaction_id
            rec = self.orders.get(want["refund_of"])
            if not rec:
                raise CaseError("expect_sagex3.journal.refund_of: no order %r was played" % want["refund_of"])
            refunds = [str(t["transaction_id"]) for t in self.sandbox_get("paytrace", "/_sandbox/transactions")
                       if t.get("transaction_type") == "REFUND" and str(t.get("original_transaction_id")) == rec["transaction_id"]
                       and t.get("success")]
            if not self.expect(len(refunds) == 1, "PayTrace holds %d approved refund(s) of %s, the journal check needs exactly 1"
                               % (len(refunds), want["refund_of"])):
                return
            ref = refunds[0]
        else:
            ref = want["reference"]
        found = [j for j in recs.get("journals", []) if j.get("reference") == ref]
        if not self.expect(len(found) == want.get("count", 1), "Sage X3 holds %d GACC with REF %r, expected %d (journals: %s)"
                           % (len(found), ref, want.get("count", 1), [j.get("reference") for j in recs.get("journals", [])])) or not found:
            return
        j = found[0]["record"]
        what = "Sage X3 GACC %s (REF %s)" % (found[0].get("number"), ref)
        lines = self.x3_table(j)
        debits = [l for l in lines if l.get("DEB")]
        credits = [l for l in lines if l.get("CDT")]
        if "amount" in want:
            self.expect(sum(Decimal(l["DEB"]) for l in debits) == Decimal(want["amount"]) ==
                        sum(Decimal(l["CDT"]) for l in credits),
                        "%s: debits %s / credits %s, expected %s each" % (what, [l.get("DEB") for l in debits],
                                                                          [l.get("CDT") for l in credits], want["amount"]))
        if "debit_account" in want:
            self.expect([l.get("ACC") for l in debits] == [want["debit_account"]], "%s: debit accounts %s, expected [%r]"
                        % (what, [l.get("ACC") for l in debits], want["debit_account"]))
        if "credit_account" in want:
            self.expect([l.get("ACC") for l in credits] == [want["credit_account"]], "%s: credit accounts %s, expected [%r]"
                        % (what, [l.get("ACC") for l in credits], want["credit_account"]))
        if "currency" in want:
            self.expect(self.x3_field(j, "CUR") == want["currency"], "%s: CUR %r, expected %r" % (what, self.x3_field(j, "CUR"), want["currency"]))
        if "same_customer_as" in want:
            sohs = self.x3_order_of(want["same_customer_as"], recs)
            cust = self.x3_field(sohs[0]["record"], "BPCORD") if sohs else None
            bprs = sorted({l.get("BPR") for l in lines if l.get("BPR")})
            self.expect(bprs == [cust], "%s: lines name customer(s) %s, expected the customer of %s (%r)"
                        % (what, bprs, want["same_customer_as"], cust))

    def check_x3_every_order(self, recs):
        """Each approved PayTrace sale: one SOH (reference = invoice_id) with its lines,
        allocated, and one PAY (REF = transaction_id, AMTCUR = amount) linked to it; each
        declined sale: nothing; no record another sale did not ask for."""
        mine = self.gateway_orders("paytrace")
        sohs, pays = {}, {}
        for o in recs.get("sales_orders", []):
            sohs.setdefault(o.get("reference"), []).append(o)
        for p in recs.get("payments", []):
            pays.setdefault(p.get("reference"), []).append(p)
        bad = []
        for code, o in sorted(mine.items()):
            so, ps = sohs.get(code, []), pays.get(o["transaction_id"], [])
            if o["status"] != "Ok":
                if so or ps:
                    bad.append("%s (declined): %d SOH, %d PAY, expected none" % (code, len(so), len(ps)))
                continue
            if len(so) != 1 or len(ps) != 1:
                bad.append("%s: %d SOH and %d PAY, expected exactly 1 each" % (code, len(so), len(ps)))
                continue
            if not so[0].get("allocation"):
                bad.append("%s: SOH %s not allocated" % (code, so[0].get("number")))
            if ps[0].get("order") != so[0].get("number"):
                bad.append("%s: PAY %s linked to %r, not %s" % (code, ps[0].get("number"), ps[0].get("order"), so[0].get("number")))
            amt = self.x3_field(ps[0]["record"], "AMTCUR")
            if amt is None or to_minor(Decimal(amt), "USD") != o["amount"]:
                bad.append("%s: PAY AMTCUR %r, expected %d minor units" % (code, amt, o["amount"]))
            want_lines = [(l["sku"], Decimal(str(l["quantity"])), Decimal(str(l["unit_price"]))) for l in o["lines"]]
            got_lines = [(l.get("ITMREF"), Decimal(l.get("QTY", "0")), Decimal(l.get("GROPRI", "0"))) for l in self.x3_table(so[0]["record"])]
            if want_lines != got_lines:
                bad.append("%s: SOH lines %s, expected %s" % (code, got_lines, want_lines))
        refs = {o["transaction_id"] for o in mine.values()}
        strays = [r for r in sohs if r not in mine] + [r for r in pays if r not in refs]
        if strays:
            bad.append("records with references no sale had: %s" % ", ".join(map(str, strays[:5])))
        for b in bad[:20]:
            self.fail("Sage X3 exactly once: " + b)
        self.say("Sage X3 exactly once: %d approved sale(s), %d SOH, %d PAY"
                 % (len(self.ok_orders("paytrace")), len(recs.get("sales_orders", [])), len(recs.get("payments", []))))

    # -- the shop --

    def step_expect_shop(self, spec, step):
        known = {"received", "duplicates", "rejected", "failed_injected", "statuses"}
        for k in spec:
            if k not in known:
                raise CaseError("expect_shop.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        st = self.sandbox_get("shop", "/_sandbox/stats")
        for key in ("received", "duplicates", "rejected", "failed_injected"):
            if key in spec:
                want = spec[key]
                if isinstance(want, dict):
                    if "min" in want:
                        self.expect(st[key] >= want["min"], "shop stats: %s = %d, expected at least %d" % (key, st[key], want["min"]))
                    if "max" in want:
                        self.expect(st[key] <= want["max"], "shop stats: %s = %d, expected at most %d" % (key, st[key], want["max"]))
                else:
                    self.expect(st[key] == want, "shop stats: %s = %d, expected %d" % (key, st[key], want))
        for w in as_list(spec.get("statuses", [])):
            self.check_shop_statuses(w)
        return "shop: received %d, duplicates %d, rejected %d, failed (injected) %d" % (
            st["received"], st["duplicates"], st["rejected"], st["failed_injected"])

    def check_shop_statuses(self, want):
        known = {"order_reference", "count", "states", "amount_minor", "gateway_transaction_id_of"}
        for k in want:
            if k not in known:
                raise CaseError("expect_shop.statuses.%s: unknown key (known: %s)" % (k, ", ".join(sorted(known))))
        ref = want["order_reference"]
        data = self.sandbox_get("shop", "/_sandbox/statuses?order_reference=" + urllib.parse.quote(ref))
        sts = data.get("statuses", [])
        what = "shop statuses of %s" % ref
        if "count" in want:
            self.expect(len(sts) == want["count"], "%s: %d, expected %d" % (what, len(sts), want["count"]))
        if "states" in want:
            got = [s.get("state") for s in sts]
            self.expect(got == want["states"], "%s: states %s, expected %s" % (what, got, want["states"]))
        keys = [s.get("idempotency_key") for s in sts]
        self.expect(len(set(keys)) == len(keys), "%s: an Idempotency-Key recorded twice: %s" % (what, keys))
        for s in sts:
            # the signature, recomputed here from the protocol's text: t=<unix>,v1=HMAC(secret, "<t>." + body)
            parts = dict(p.split("=", 1) for p in (s.get("signature") or "").split(",") if "=" in p)
            mac = hmac.new(self.shop_secret.encode(), ("%s.%s" % (parts.get("t"), s.get("raw_body") or "")).encode(),
                           hashlib.sha256).hexdigest()
            self.expect(parts.get("v1") == mac, "%s: signature %r does not verify over the raw body" % (what, s.get("signature")))
            doc = as_json(s.get("raw_body") or "") or {}
            self.expect(doc.get("order_reference") == ref, "%s: body order_reference %r" % (what, doc.get("order_reference")))
            if "amount_minor" in want:
                self.expect((doc.get("amount") or {}).get("minor") == want["amount_minor"],
                            "%s: amount %s, expected %d minor units" % (what, doc.get("amount"), want["amount_minor"]))
            if "gateway_transaction_id_of" in want:
                rec = self.orders.get(want["gateway_transaction_id_of"]) or {}
                self.expect(str(doc.get("gateway_transaction_id")) == rec.get("transaction_id"),
                            "%s: gateway_transaction_id %r, expected %r" % (what, doc.get("gateway_transaction_id"), rec.get("transaction_id")))

    # the emulators a step needs
    STEP_SYSTEMS = {
        "order": ("opayo",), "cli_during": ("opayo",), "kill9_under_load": ("opayo", "xero"),
        "expect_xero": ("xero",), "paytrace_sale": ("paytrace",), "expect_syspro": ("syspro",),
        "expect_sagex3": ("sagex3",), "expect_shop": ("shop",),
    }

    CLI_EXPECT = {"expect_rc", "expect_stdout_contains", "expect_stdout_not_contains", "expect_stderr_contains"}

    STEP_TABLE = {
        # type key: (method, keys allowed beside it)
        "order": (step_order, set()),
        "resend": (step_resend, set()),
        "webhook": (step_webhook, {"expect_status", "expect_error_code", "expect_message_contains", "expect_duplicate", "expect_accepted"}),
        "faults": (step_faults, set()),
        "sandbox_settings": (step_sandbox_settings, set()),
        "wait_settled": (step_wait_settled, set()),
        "sleep": (step_sleep, set()),
        "expect_xero": (step_expect_xero, set()),
        "expect_dlq": (step_expect_dlq, set()),
        "expect_events": (step_expect_events, set()),
        "expect_metrics": (step_expect_metrics, set()),
        "expect_health": (step_expect_health, set()),
        "expect_retry_gaps": (step_expect_retry_gaps, set()),
        "edit_flow": (step_edit_flow, set()),
        "restart": (step_restart, set()),
        "dlq_replay": (step_dlq_replay, {"expect_replayed"}),
        "kill9_under_load": (step_kill9_under_load, set()),
        "cli_during": (step_cli_during, set()),
        "cli": (step_cli, CLI_EXPECT),
        "paytrace_sale": (step_paytrace_sale, set()),
        "sandbox_post": (step_sandbox_post, set()),
        "refund": (step_refund, CLI_EXPECT | {"expect_refundable_minor", "expect_duplicate", "expect_status",
                                              "expect_message_contains"}),
        "chargeback": (step_chargeback, CLI_EXPECT),
        "expect_refunds": (step_expect_refunds, set()),
        "expect_chargebacks": (step_expect_chargebacks, set()),
        "expect_event": (step_expect_event, set()),
        "expect_stats": (step_expect_stats, set()),
        "stop_paybridge": (step_stop_paybridge, set()),
        "start_paybridge": (step_start_paybridge, set()),
        "expect_syspro": (step_expect_syspro, set()),
        "expect_sagex3": (step_expect_sagex3, set()),
        "expect_shop": (step_expect_shop, set()),
        "reconcile": (step_reconcile, CLI_EXPECT),
        "expect_sandbox": (step_expect_sandbox, set()),
        "write_file": (step_write_file, set()),
        "expect_files": (step_expect_files, set()),
        "admin": (step_admin, set()),
    }

    def check_case(self):
        steps = self.case.get("steps")
        if not isinstance(steps, list) or not steps:
            raise CaseError("%s: \"steps\" must be a non-empty list" % self.case_path)
        for i, step in enumerate(steps, 1):
            if not isinstance(step, dict):
                raise CaseError("step %d: must be an object" % i)
            types = [k for k in step if k in self.STEP_TABLE]
            if len(types) != 1:
                raise CaseError("step %d: needs exactly one of %s, has %s" % (i, ", ".join(sorted(self.STEP_TABLE)), sorted(step)))
            allowed = self.STEP_TABLE[types[0]][1] | {types[0], "comment"}
            for k in step:
                if k not in allowed:
                    raise CaseError("step %d (%s): unknown key %r" % (i, types[0], k))
            for system in self.STEP_SYSTEMS.get(types[0], ()):
                if system not in self.systems:
                    raise CaseError("step %d (%s) needs the %s emulator, which the case's pairs (%s) do not start"
                                    % (i, types[0], system, ", ".join(self.pairs)))

    def execute(self):
        self.check_case()
        self.say("case %s: %s" % (self.name, self.case.get("description", "")))
        ok = False
        try:
            self.setup()
            for i, step in enumerate(self.case["steps"], 1):
                kind = next(k for k in step if k in self.STEP_TABLE)
                if self.time_left() <= 0:
                    raise Abort("the case ran out of its %s s budget before step %d" % (self.case.get("timeout_s", 150), i))
                before = len(self.failures)
                self.pb.check_alive()
                note = self.STEP_TABLE[kind][0](self, step[kind], step)
                self.pb.check_alive()
                self.say("step %d %s: %s%s" % (i, kind, note or "", "" if len(self.failures) == before else "  [FAILED]"))
            ok = True
        except Abort as e:
            self.fail("aborted: %s" % e)
        except Exception:
            import traceback
            self.fail("the runner crashed:\n" + traceback.format_exc())
        finally:
            problem = None
            if self.pb.proc is not None:
                problem = self.pb.stop()
            if problem:
                self.fail(problem)
            self.sandbox.stop()
            if self.sftp:
                self.sftp.stop()
        # paybridge logs at level error only when it lost its grip on the store: never expected
        allowed = set(self.case.get("allow_log_errors", []))
        errors = [l for l in self.log_lines('"level":"error"', 1000000)
                  if not any('"event":"%s"' % a in l for a in allowed)]
        if errors:
            self.fail("paybridge logged %d error line(s):\n    %s" % (len(errors), "\n    ".join(errors[:8])))
        if self.failures:
            print("\n==== paybridge log (last %d lines of %s) ====" % (LOG_TAIL_LINES, self.pb.logs[-1] if self.pb.logs else "-"))
            if self.pb.logs:
                print(self.tail(self.pb.logs[-1]))
            print("\n==== FAIL %s: %d problem(s)" % (self.name, len(self.failures)))
            for f in self.failures:
                print("  - " + f.replace("\n", "\n    "))
            print("  (files kept in %s)" % self.dir)
            return 1
        print("==== PASS %s (%.1f s)" % (self.name, time.time() - self.t0))
        if not self.keep:
            shutil.rmtree(self.dir, ignore_errors=True)
        return 0 if ok else 1


def as_list(v):
    return v if isinstance(v, list) else [v]


def count_by(items, key):
    out = {}
    for it in items:
        out[it.get(key)] = out.get(it.get(key), 0) + 1
    return out


def main():
    ap = argparse.ArgumentParser(description="Replay one paybridge end-to-end case against the sandbox.")
    ap.add_argument("--bin-dir", required=True, help="the build directory holding paybridge and paybridge-sandbox")
    ap.add_argument("--source-dir", required=True, help="the source tree (for the templates in flows/)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory even when the case passes")
    ap.add_argument("case", help="a case file, tests/e2e/cases/NAME.json")
    args = ap.parse_args()
    run = None
    try:
        run = Run(args.bin_dir, args.source_dir, args.case, args.keep or os.environ.get("PB_E2E_KEEP") == "1")
        # a ctest timeout sends SIGTERM first: stop our children instead of orphaning them
        signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(Abort("the runner got SIGTERM")))
        return run.execute()
    except CaseError as e:
        print("case error: %s" % e, file=sys.stderr)
        if run is not None and not run.pb.starts:
            shutil.rmtree(run.dir, ignore_errors=True)  # nothing ran: nothing to keep
        return 2


if __name__ == "__main__":
    sys.exit(main())
