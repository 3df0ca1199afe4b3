#!/usr/bin/env python3
"""Sends mail through Moat with Python's smtplib: plain, STARTTLS, and AUTH on submission.

usage: smtplib_client.py MX_PORT SUBMISSION_PORT USER PASSWORD
Exits non-zero (with a traceback) on any unexpected reply.
"""
import smtplib
import ssl
import sys
from email.message import EmailMessage

mx_port, sub_port, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]

def message(subject):
    m = EmailMessage()
    m["From"] = "alice@sender.test"
    m["To"] = "bob@example.test"
    m["Subject"] = subject
    m.set_content("Hello from smtplib.\n.leading dot line\n" + "x" * 200 + "\n")
    return m

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE

# 1. Plain ESMTP on the MX connector.
with smtplib.SMTP("127.0.0.1", mx_port, timeout=10) as s:
    code, caps = s.ehlo("client.test")
    assert code == 250, code
    for ext in ("pipelining", "size", "8bitmime", "smtputf8", "enhancedstatuscodes", "chunking", "starttls"):
        assert s.has_extn(ext), f"missing {ext}"
    assert not s.has_extn("auth"), "AUTH offered in clear text"
    refused = s.send_message(message("plain"))
    assert refused == {}, refused

# 2. STARTTLS on the MX connector.
with smtplib.SMTP("127.0.0.1", mx_port, timeout=10) as s:
    s.starttls(context=ctx)
    s.ehlo("client.test")
    assert s.sock.version() in ("TLSv1.3", "TLSv1.2"), s.sock.version()
    refused = s.send_message(message("starttls"))
    assert refused == {}, refused

# 3. Submission: MAIL without TLS is refused, AUTH is offered only after STARTTLS.
with smtplib.SMTP("127.0.0.1", sub_port, timeout=10) as s:
    s.ehlo("client.test")
    assert not s.has_extn("auth")
    code, _ = s.mail("alice@example.test")
    assert code == 530, code
    s.rset()
    s.starttls(context=ctx)
    s.ehlo("client.test")
    assert "PLAIN" in s.esmtp_features.get("auth", "") and "LOGIN" in s.esmtp_features.get("auth", "")
    try:
        s.login(user, "wrong-password")
        raise AssertionError("wrong password accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e.smtp_code
    s.login(user, password)
    m = message("submission")
    m.replace_header("To", "carol@elsewhere.test")
    refused = s.send_message(m, from_addr="alice@example.test", to_addrs=["carol@elsewhere.test"])
    assert refused == {}, refused

# 4. AUTH LOGIN explicitly.
with smtplib.SMTP("127.0.0.1", sub_port, timeout=10) as s:
    s.starttls(context=ctx)
    s.ehlo("client.test")
    s.user, s.password = user, password
    code, resp = s.auth("LOGIN", s.auth_login)
    assert code == 235, (code, resp)

print("smtplib: 4 sessions ok")
