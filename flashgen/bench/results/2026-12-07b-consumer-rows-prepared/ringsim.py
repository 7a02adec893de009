# The consumers of a unit share its K/V tile stream and take turns in a ring (2026-12-07b, PERF.md):
# an event model of a causal d = 64 row of units, to tell whether skipping a consumer's dead tiles can pay.
# ring of turns among 3 consumers sharing one tile stream; turn = GEMM issue (G), then softmax S off-ring.
import math, sys
def units_causal(N, BM=192, BN=128):
    us = []
    for q0 in range(0, N, BM):
        rows = min(BM, N - q0)
        stream = math.ceil((q0 + rows) / BN)
        live = []
        for c in range(3):
            r0 = q0 + 64 * c
            if r0 >= N: live.append(set()); continue
            r1 = min(r0 + 64, N)
            live.append(set(range(math.ceil(r1 / BN))))
        us.append((stream, live))
    return us
def sim(us, G, S, rotate, skip, order=None):
    # ring: turn(c,k) after turn(prev,k) ... global sequence of (position, consumer) in order
    t_turn_end = 0.0
    ready = [0.0] * 3
    pos = 0
    for u, (stream, live) in enumerate(us):
        rot = u % 3 if rotate else 0
        for k in range(stream):
            for c in range(3):
                rows = (c + rot) % 3
                is_live = (k in live[rows]) or not skip
                start = max(t_turn_end, ready[c])
                if is_live:
                    t_turn_end = start + G
                    ready[c] = t_turn_end + S
                else:
                    t_turn_end = start + 0.02
                    ready[c] = t_turn_end
    return max(ready)
N = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
us = units_causal(N) * 4
for G, S in [(0.28, 0.9), (0.28, 1.5), (0.5, 0.8), (0.6, 0.6), (0.3, 0.3)]:
    base = sim(us, G, S, False, False)
    print(f"G={G} S={S}: skip {sim(us,G,S,False,True)/base-1:+.1%}  rotate {sim(us,G,S,True,False)/base-1:+.1%}  rotate+skip {sim(us,G,S,True,True)/base-1:+.1%}")
