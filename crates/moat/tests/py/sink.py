#!/usr/bin/env python3
"""A recording SMTP sink on loopback, standing in for a hub server.

usage: sink.py PORT DIR [--reject-prefix P] [--tempfail-prefix P]

Accepts mail and writes each message (with its envelope in X-Sink-From / X-Sink-To header
lines) to DIR/<n>.eml, fsynced, before answering 250. Recipients whose local part starts
with the reject prefix get 550 5.1.1; with the tempfail prefix, 451 4.2.0. Offers PIPELINING,
8BITMIME and SMTPUTF8. Writes its pid to DIR/sink.pid and exits on SIGTERM.
"""
import asyncio
import itertools
import os
import signal
import sys

port, out = int(sys.argv[1]), sys.argv[2]
args = sys.argv[3:]
reject = args[args.index("--reject-prefix") + 1] if "--reject-prefix" in args else None
tempfail = args[args.index("--tempfail-prefix") + 1] if "--tempfail-prefix" in args else None
os.makedirs(out, exist_ok=True)
counter = itertools.count(len([f for f in os.listdir(out) if f.endswith(".eml")]))


async def session(reader, writer):
    def send(line):
        writer.write(line.encode() + b"\r\n")

    send("220 sink.test ESMTP recording sink")
    mail_from, rcpts = None, []
    try:
        while True:
            await writer.drain()
            line = await reader.readline()
            if not line:
                return
            cmd = line.decode("utf-8", "replace").strip()
            verb = cmd[:4].upper()
            if verb in ("EHLO", "HELO"):
                send("250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 SIZE 104857600")
            elif verb == "MAIL":
                mail_from, rcpts = cmd[10:].split(" ")[0].strip("<>"), []
                send("250 2.1.0 ok")
            elif verb == "RCPT":
                addr = cmd[8:].split(" ")[0].strip("<>")
                local = addr.split("@")[0]
                if reject and local.startswith(reject):
                    send("550 5.1.1 no such user")
                elif tempfail and local.startswith(tempfail):
                    send("451 4.2.0 try later")
                else:
                    rcpts.append(addr)
                    send("250 2.1.5 ok")
            elif verb == "DATA":
                if not rcpts:
                    send("554 5.5.1 no valid recipients")
                    continue
                send("354 go ahead")
                await writer.drain()
                data = bytearray()
                while True:
                    l = await reader.readline()
                    if not l:
                        return
                    if l == b".\r\n":
                        break
                    data += l[1:] if l.startswith(b"..") else l
                n = next(counter)
                path = os.path.join(out, f"{n:07d}.eml")
                head = f"X-Sink-From: <{mail_from}>\r\n" + "".join(f"X-Sink-To: <{r}>\r\n" for r in rcpts)
                with open(path + ".tmp", "wb") as f:
                    f.write(head.encode() + bytes(data))
                    f.flush()
                    os.fsync(f.fileno())
                os.rename(path + ".tmp", path)
                send(f"250 2.0.0 ok stored {n}")
            elif verb == "RSET":
                mail_from, rcpts = None, []
                send("250 2.0.0 ok")
            elif verb == "NOOP":
                send("250 2.0.0 ok")
            elif verb == "QUIT":
                send("221 2.0.0 bye")
                await writer.drain()
                return
            else:
                send("502 5.5.1 not implemented")
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(session, "127.0.0.1", port)
    with open(os.path.join(out, "sink.pid"), "w") as f:
        f.write(str(os.getpid()))
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
    async with server:
        await stop


asyncio.run(main())
