#!/usr/bin/env python3
"""Open-relay table, driven with Python's smtplib (a client written elsewhere).

usage: relay_table.py MX_PORT SUBMISSION_PORT USER PASSWORD

Every address form that can smuggle a relay is sent over both connectors, from a client
address that may relay (127.0.0.2) and one that may not (127.0.0.3), with and without AUTH
(after STARTTLS). A recipient outside the accepted domains must be refused unless the client
may relay or has authenticated. Prints one line per case; exits 1 on any mismatch.
"""
import smtplib
import ssl
import sys

mx_port, sub_port, user, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]

LOCAL = ["bob@example.test", "Bob@EXAMPLE.TEST"]
RELAY = [
    "bob@other.test",
    "bob%other.test@example.test",
    '"bob@other.test"@example.test',
    "@example.test:bob@other.test",
    "bob@other.test@example.test",
    "bob@example.test.",
    "bob@[192.0.2.1]",
    "bob!other.test@example.test",
]

# Not valid RFC 5321 paths (two unquoted "@"), or an address literal, which the SMTP parser
# does not take: refused with 501 from everyone, relay permission or not.
INVALID = {"bob@other.test@example.test", "bob@[192.0.2.1]"}

def attempt(port, source, use_auth, rcpt):
    """Returns the reply code to RCPT (or to MAIL when MAIL is refused)."""
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as s:
        s.ehlo("client.test")
        if use_auth:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo("client.test")
            s.login(user, password)
        elif port == sub_port:
            # Submission requires TLS before MAIL: do it, but do not authenticate.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s.starttls(context=ctx)
            s.ehlo("client.test")
        code, _ = s.mail("sender@example.test")
        if code != 250:
            return code
        # smtplib would quote or alter some forms; send the raw command.
        code, _ = s.docmd(f"RCPT TO:<{rcpt}>")
        return code

failures = 0
rows = 0
for name, port in (("mx", mx_port), ("submission", sub_port)):
    for source in ("127.0.0.2", "127.0.0.3"):
        for use_auth in (False, True):
            for rcpt in LOCAL + RELAY:
                may_relay = source == "127.0.0.2" or use_auth
                if name == "submission" and not use_auth:
                    want = "refused"  # submission requires AUTH for everything
                elif rcpt in INVALID:
                    want = "refused"
                elif rcpt in LOCAL:
                    want = "accepted"
                else:
                    want = "accepted" if may_relay else "refused"
                code = attempt(port, source, use_auth, rcpt)
                got = "accepted" if code == 250 else "refused"
                # A refusal of a relay attempt must be 550 5.7.1 (or a syntax error, 501,
                # for forms the parser rejects), never a temporary error.
                ok = got == want and (got == "accepted" or code in (530, 550, 501))
                rows += 1
                mark = "ok  " if ok else "FAIL"
                print(f"{mark} {name:10} from={source} auth={use_auth!s:5} rcpt=<{rcpt}> code={code} want={want}")
                failures += 0 if ok else 1
print(f"{rows} cases, {failures} failures")
sys.exit(1 if failures else 0)
