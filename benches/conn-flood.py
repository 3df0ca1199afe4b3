#!/usr/bin/env python3
"""Opens N SMTP connections, C at a time, and prints connections/s.

usage: conn-flood.py PORT N C EXPECT [SOURCE=127.0.0.3]

Each connection comes from SOURCE (any 127/8 address works on loopback), reads the server's
first reply (the greeting, or a refusal at connect), sends QUIT and reads until the server
closes; then the next one opens. The rate counts whole connections, from the first connect
to the last close. One process, one epoll loop over non-blocking sockets (no asyncio: the
client should cost as little CPU as a Python client can, since it shares the machine with
the server).

Prints one line, `RATE OK BAD`: OK counts first replies with code EXPECT, BAD the others
(wrong code, no reply, reset before the first reply, timeout); the first bad one is
described on stderr. Loopback only.
"""
import errno, select, socket, sys, time

TIMEOUT = 10.0  # per connection
port, n, c = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
expect = sys.argv[4].encode()
source = sys.argv[5] if len(sys.argv) > 5 else "127.0.0.3"
server = ("127.0.0.1", port)

ep = select.epoll()
conns = {}  # fd -> [socket, buffer, first reply line or None, started]
opened = ok = bad = 0
first_bad = None


def open_one():
    global opened
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.bind((source, 0))
    err = s.connect_ex(server)
    if err not in (0, errno.EINPROGRESS):
        s.close()
        raise OSError(err, f"connect: {errno.errorcode.get(err, err)}")
    conns[s.fileno()] = [s, b"", None, time.monotonic()]
    ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
    opened += 1


def finish(fd, problem=None):
    global ok, bad, first_bad
    s, _, line, _ = conns.pop(fd)
    ep.unregister(fd)
    s.close()
    if problem is None and line is not None and line[:3] == expect:
        ok += 1
    else:
        bad += 1
        first_bad = first_bad or problem or (line or b"closed before a reply").decode("ascii", "replace")
    if opened < n:
        open_one()


def readable(fd):
    st = conns[fd]
    try:
        data = st[0].recv(4096)
    except (ConnectionResetError, BrokenPipeError) as e:
        # After the first reply a reset only means the server closed first.
        return finish(fd, None if st[2] is not None else f"{type(e).__name__}")
    except OSError as e:
        return finish(fd, f"{type(e).__name__}: {e}")
    if not data:
        return finish(fd)
    if st[2] is not None:
        return  # the reply to QUIT
    st[1] += data
    while b"\r\n" in st[1]:
        line, st[1] = st[1].split(b"\r\n", 1)
        if len(line) < 4 or line[3:4] == b" ":  # the last line of a reply
            st[2] = line
            try:
                st[0].send(b"QUIT\r\n")
            except OSError:
                pass  # the server already closed; its EOF follows
            return


t0 = time.perf_counter()
for _ in range(min(c, n)):
    open_one()
checked = time.monotonic()
while conns:
    for fd, _ in ep.poll(1.0):
        if fd in conns:
            readable(fd)
    now = time.monotonic()
    if now - checked > 0.5:
        checked = now
        for fd in [fd for fd, st in conns.items() if now - st[3] > TIMEOUT]:
            finish(fd, "timeout")
secs = time.perf_counter() - t0
print(f"{n / secs:.0f} {ok} {bad}")
if first_bad:
    print(f"first unexpected reply (wanted {expect.decode()}): {first_bad}", file=sys.stderr)
