"""What every program here shares, light enough to load before torch: a quiet start (Ctrl-C or SIGTERM while
torch is still importing ends in one line and an exit code, not a traceback), Stop, the one-line way out, and
signals held while a block that must finish whole runs."""
import contextlib
import os
import signal
import sys


def quiet_until_ready(prog):
    """Until the program installs its own handlers (train.main, cli.run_tool, datasize.main), a signal prints one
    line and exits 128 + its number. A shell that ignores SIGINT keeps it ignored. Output that the terminal's
    encoding cannot show is escaped."""
    def stop(signum, _):
        sys.stderr.write(f"\n{prog}: interrupted while starting; nothing was written\n")
        os._exit(128 + signum)  # no unwinding: torch may be half imported
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, stop)
    for stream in (sys.stdout, sys.stderr):  # an ASCII terminal (PYTHONIOENCODING=ascii) gets \xb1 for ±, not a traceback
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def ready():
    """The usual meanings back: Ctrl-C raises KeyboardInterrupt, SIGTERM ends the process (where not ignored)."""
    for sig, usual in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, usual)


class Stop(Exception):
    """Ends a program's main() with one line on stderr and an exit code."""
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds as Ctrl-C does: temporary files removed, the
    locks released, the finished epochs named."""


def on_sigterm(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def signals_held():
    """Ctrl-C and SIGTERM wait until the block is done, then act as usual: no interruption falls between the
    results files of one pack. (A signal mask would not do: torch's threads would take the signal.)"""
    caught, held = [], [s for s in (signal.SIGINT, signal.SIGTERM) if signal.getsignal(s) is not signal.SIG_IGN]
    old = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if caught:
            raise Terminated() if caught[0] == signal.SIGTERM else KeyboardInterrupt()
