#!/usr/bin/env python3
"""A recording SMTP load client for the crash test.

usage: crashload.py PORT COUNT SESSIONS OUT

Sends COUNT messages numbered 0..COUNT-1 (header X-Crash-Seq and the Subject carry the number)
to 127.0.0.1:PORT over SESSIONS concurrent sessions, each session reusing its connection.
A number whose transaction was cut by a lost connection or answered with 4xx is sent again
on a new connection, with the next attempt number (header X-Crash-Attempt, from 1), so a
message the node stored but could not acknowledge may arrive twice; that is allowed
(at-least-once). Only when DATA got a 250 reply is "NUMBER ATTEMPT" written to OUT (one line
each, flushed at once): that exact attempt must then arrive. A 5xx reply is a failure: the
client records it and exits with status 1 at the end.

Postfix's smtp-source would be the usual load tool, but it cannot say which messages got
their 250, and the crash test needs exactly that list to prove nothing acknowledged is lost.

Prints one summary line: accepted, resent, connection errors, refused connects, 5xx replies.
"""
import smtplib
import socket
import sys
import threading
import time

port, count, sessions, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
lock = threading.Lock()
next_number = iter(range(count))
stats = {"accepted": 0, "resent": 0, "conn_errors": 0, "refused": 0, "permanent": 0}
permanent = []
record = open(out, "w")
DEADLINE = time.monotonic() + 240


def take():
    with lock:
        return next(next_number, None)


def count_stat(name, n=1):
    with lock:
        stats[name] += n


def message(n, attempt):
    return (
        f"From: load@sender.test\r\n"
        f"To: rcpt{n % 10}@example.test\r\n"
        f"Subject: crash {n}\r\n"
        f"X-Crash-Seq: {n}\r\n"
        f"X-Crash-Attempt: {attempt}\r\n"
        f"Message-ID: <crash-{n}@sender.test>\r\n"
        f"\r\n"
        f"message number {n}\r\n" + "filler line to give the message some body\r\n" * 20
    ).encode()


def connect():
    """Connects, retrying while the node is down (it is being restarted)."""
    while time.monotonic() < DEADLINE:
        try:
            s = smtplib.SMTP("127.0.0.1", port, local_hostname="load.sender.test", timeout=15)
            s.ehlo()
            return s
        except (OSError, smtplib.SMTPException):
            count_stat("refused")
            time.sleep(0.05)
    raise SystemExit("node unreachable for too long")


def worker():
    conn = None
    n, attempt = take(), 1
    while n is not None:
        if conn is None:
            conn = connect()
        try:
            code, reply = conn.mail("load@sender.test")
            if code == 250:
                code, reply = conn.rcpt(f"rcpt{n % 10}@example.test")
            if code == 250:
                code, reply = conn.data(message(n, attempt))
        except (OSError, smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException) as e:
            # The transaction's outcome is unknown: the node may have stored it. Send again.
            if isinstance(e, smtplib.SMTPResponseException) and 500 <= e.smtp_code < 600:
                code, reply = e.smtp_code, e.smtp_error
            else:
                count_stat("conn_errors")
                count_stat("resent")
                attempt += 1
                try:
                    conn.close()
                except OSError:
                    pass
                conn = None
                continue
        if code == 250:
            with lock:
                record.write(f"{n} {attempt}\n")
                record.flush()
                stats["accepted"] += 1
            n, attempt = take(), 1
        elif 400 <= code < 500:
            # Temporary refusal (e.g. 421 while shutting down): reset and resend on a new session.
            count_stat("resent")
            attempt += 1
            try:
                conn.close()
            except OSError:
                pass
            conn = None
            time.sleep(0.05)
        else:
            with lock:
                stats["permanent"] += 1
                permanent.append((n, code, reply))
            try:
                conn.rset()
            except (OSError, smtplib.SMTPException):
                conn = None
            n, attempt = take(), 1
    if conn is not None:
        try:
            conn.quit()
        except (OSError, smtplib.SMTPException):
            pass


socket.setdefaulttimeout(15)
threads = [threading.Thread(target=worker) for _ in range(sessions)]
t0 = time.monotonic()
for t in threads:
    t.start()
for t in threads:
    t.join()
record.close()
secs = time.monotonic() - t0
print(
    f"crashload: accepted={stats['accepted']} resent={stats['resent']} "
    f"conn_errors={stats['conn_errors']} refused_connects={stats['refused']} "
    f"permanent={stats['permanent']} secs={secs:.1f}"
)
for n, code, reply in permanent[:5]:
    print(f"crashload: message {n} refused: {code} {reply!r}")
sys.exit(1 if permanent else 0)
