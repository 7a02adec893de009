"""The steady Next-step loop of the first persistent 3/2-consumer ws forward kernel in a
.sass: its length and opcode counts. usage: python loopmix.py fwd.sass [kernel-substring]"""
import re, sys, collections
text = open(sys.argv[1]).read()
want = sys.argv[2] if len(sys.argv) > 2 else "Lb1ELi2ELb0ELb0ELb0ELb0ELb0E"
secs = re.split(r"\n\t\.section\t", text)
sec = next(s for s in secs if s.startswith(".text.") and want in s.split(",")[0])
lines = sec.splitlines()
labels = {}
ins = []  # (line index, text)
for i, l in enumerate(lines):
    m = re.match(r"^(\.L_x_\d+):", l)
    if m: labels[m.group(1)] = i
best = None
for i, l in enumerate(lines):
    m = re.search(r"BRA `\((\.L_x_\d+)\)", l)
    if m and m.group(1) in labels and labels[m.group(1)] < i:
        body = lines[labels[m.group(1)]:i + 1]
        joined = "\n".join(body)
        m_qk = re.search(r"HGMMA\.64x\d+x16\.F32\.BF16 R\d+, gdesc", joined); qk = m_qk.start() if m_qk else -1; pv = joined.find("tnspB")
        if qk >= 0 and pv > qk and "BAR.SYNC" in joined:
            if best is None or len(body) < best[1] - best[0]:
                best = (labels[m.group(1)], i + 1)
body = lines[best[0]:best[1]]
c = collections.Counter()
for l in body:
    m = re.search(r"\*/\s+(@!?U?P\w+\s+)?([A-Z0-9_]+)", l)
    if m: c[m.group(2)] += 1
print(sys.argv[1], "loop instructions", sum(c.values()))
print(" ".join(f"{k}:{v}" for k, v in c.most_common()))
# between the turn's BAR.SYNC and BAR.ARV
s = next(i for i, l in enumerate(body) if "BAR.SYNC" in l)
e = next(i for i, l in enumerate(body) if "BAR.ARV" in l and i > s)
print("in the turn:", sum(1 for l in body[s:e+1] if re.search(r"\*/", l)))
