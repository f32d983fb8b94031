"""Runs a command on a pseudo-terminal, answers its prompt, and prints everything the terminal
showed. Used to test `runta secret add --prompt` as a person at a terminal would use it.

usage: pty_answer.py PROMPT_TEXT -- COMMAND [ARG...]
The answer is read from the environment variable PTY_ANSWER (so it is not in argv).
Exit status: the command's.
"""
import os
import pty
import select
import sys
import time

prompt = sys.argv[1].encode()
command = sys.argv[sys.argv.index("--") + 1:]
answer = os.environ.pop("PTY_ANSWER").encode()

pid, fd = pty.fork()
if pid == 0:
    os.execvp(command[0], command)

seen = b""
answered = False
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    ready, _, _ = select.select([fd], [], [], 0.1)
    if ready:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    if not answered and prompt in seen:
        time.sleep(0.1)
        os.write(fd, answer + b"\r")
        answered = True
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(seen)
sys.exit(os.waitstatus_to_exitcode(status))
