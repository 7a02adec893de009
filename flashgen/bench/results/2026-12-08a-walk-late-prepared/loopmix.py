"""The steady step of a warp-specialised forward kernel in nvdisasm's output (sassloop.py):
the smallest loop that holds a turn (BAR.SYNC), a Q K^T (an HGMMA from two descriptors) and
then a P V (an HGMMA with a transposed B). Prints its static instruction count, its opcode
counts, and the instructions from the turn's BAR.SYNC to its BAR.ARV (what the other
consumers wait through).

    python loopmix.py fwd.sass [KERNEL]

KERNEL: a piece of the kernel's mangled name; the default picks the persistent three-consumer
d = 64 instance without dropout (Stages 4, Consumers 3, persistent, 2 Q slots, no output
stage, ...): "Li4ELi3ELb1ELi2ELb0ELb0ELb0ELb0ELb0E". The d = 128 persistent one (160-key tiles):
"Li160ELi2ELi2ELb1E".
"""
import collections
import re
import sys

if len(sys.argv) not in (2, 3):
    sys.exit(__doc__)
want = sys.argv[2] if len(sys.argv) == 3 else "Li4ELi3ELb1ELi2ELb0ELb0ELb0ELb0ELb0E"
sections = re.split(r"\n\t\.section\t", open(sys.argv[1]).read())
section = next((s for s in sections if s.startswith(".text.") and want in s.split(",")[0]), None)
if section is None:
    sys.exit(f"loopmix.py: no kernel whose name holds {want!r} in {sys.argv[1]}")
lines = section.splitlines()
labels = {m.group(1): i for i, l in enumerate(lines) if (m := re.match(r"^(\.L_x_\d+):", l))}
QK = re.compile(r"HGMMA\.64x\d+x16\.F32\.BF16 R\d+, gdesc")
best = None  # (first line, line after the backward branch)
for i, line in enumerate(lines):
    m = re.search(r"BRA `\((\.L_x_\d+)\)", line)
    if not m or labels.get(m.group(1), i) >= i:
        continue  # not a backward branch
    body = "\n".join(lines[labels[m.group(1)]:i + 1])
    qk = QK.search(body)
    if qk and body.find("tnspB", qk.start()) > 0 and "BAR.SYNC" in body:
        if best is None or i + 1 - labels[m.group(1)] < best[1] - best[0]:
            best = (labels[m.group(1)], i + 1)
if best is None:
    sys.exit("loopmix.py: no loop with a turn, a Q K^T and then a P V in that kernel")
body = lines[best[0]:best[1]]
OPCODE = re.compile(r"\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)")
opcodes = collections.Counter(m.group(2) for l in body if (m := OPCODE.search(l)))
print(sys.argv[1], "loop instructions", sum(opcodes.values()))
print(" ".join(f"{k}:{v}" for k, v in opcodes.most_common()))
turn = next(i for i, l in enumerate(body) if "BAR.SYNC" in l)
handover = next((i for i, l in enumerate(body) if "BAR.ARV" in l and i > turn), len(body) - 1)
print("in the turn:", sum(1 for l in body[turn:handover + 1] if OPCODE.search(l)))
