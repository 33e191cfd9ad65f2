"""Limits the tests share. Tests assert behaviour, never time: a busy machine makes a command slow, not wrong."""

# How long a test waits on a subprocess or a condition before calling it hung: a guard against a hang, not a
# measure of speed (timing lives in bench/).
HANG_GUARD_S = 3600
