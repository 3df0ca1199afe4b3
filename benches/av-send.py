#!/usr/bin/env python3
"""Sends N messages that share one attachment over C concurrent SMTP sessions; prints msgs/s.

usage: av-send.py PORT N C ATTACHMENT_KB
Each message differs in its Subject and Message-ID; the attachment is the same bytes in all
of them, as when one file is sent to many recipients. Loopback only.
"""
import base64, os, smtplib, sys, threading, time

port, n, c, kb = (int(a) for a in sys.argv[1:5])
blob = base64.encodebytes(os.urandom(kb * 1024)).decode().replace("\n", "\r\n")
def message(i):
    return (f"From: <bench@source.example>\r\nTo: <rcpt@sink.example>\r\nSubject: shared attachment {i}\r\n"
            f"Message-ID: <{i}.{time.time()}@source.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
            f"message {i}\r\n--b1\r\nContent-Type: application/octet-stream\r\n"
            "Content-Disposition: attachment; filename=\"report.bin\"\r\n"
            f"Content-Transfer-Encoding: base64\r\n\r\n{blob}--b1--\r\n")
counter = iter(range(n)); lock = threading.Lock(); failures = []
def worker():
    s = smtplib.SMTP("127.0.0.1", port, timeout=60); s.ehlo("source.example")
    while True:
        with lock:
            i = next(counter, None)
        if i is None:
            break
        try:
            s.sendmail("bench@source.example", ["rcpt@sink.example"], message(i))
        except smtplib.SMTPException as e:
            failures.append(str(e))
    s.quit()
t0 = time.time()
threads = [threading.Thread(target=worker) for _ in range(c)]
[t.start() for t in threads]; [t.join() for t in threads]
secs = time.time() - t0
print(f"{n / secs:.1f} {len(failures)}")
if failures:
    print("first failure:", failures[0], file=sys.stderr)
