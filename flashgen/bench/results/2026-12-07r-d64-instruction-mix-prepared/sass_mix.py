"""The opcode mix of kernels from ncu's SASS source page (`ncu --import R --page source --csv
--print-source sass`): warp instructions executed per opcode family, side by side, the first file
as the base of the ratio column.

    python3 sass_mix.py cudnn-sass.csv flashgen-sass.csv
"""
import collections
import csv
import re
import sys

# families a reader of the consumer loop asks about; the first pattern that matches names it
FAMILIES = [
    ("wgmma", r"^HGMMA|^WARPGROUP"),
    ("exp (MUFU)", r"^MUFU"),
    ("fp32 math", r"^(FFMA|FMUL|FADD|FMNMX|FSEL|FSETP|FCHK|FRND)"),
    ("packed conv", r"^(F2FP|F2F|I2F|F2I)"),
    ("uniform", r"^U"),   # TMA's issue (UTMALDG, UBLKCP) included: uniform-datapath ops
    ("branch / sync", r"^(BRA|BSSY|BSYNC|WARPSYNC|BAR|EXIT|RET|CALL|YIELD|NANOSLEEP|ELECT|VOTE)"),
    ("mbarrier / sync mem", r"^(SYNCS|ARRIVES|MEMBAR|FENCE|DEPBAR|ERRBAR|CCTL)"),
    ("shared / global mem", r"^(LDS|STS|LDG|STG|LDSM|STSM|LD|ST|ATOM|RED|LDC)"),
    ("int / predicate", r"^(IMAD|IADD|LEA|ISETP|LOP|SHF|SEL|IMNMX|PLOP|P2R|R2P|PRMT|MOV|S2R|CS2R|S2UR|R2UR|IABS|BMSK|FLO|POPC|SGXT)"),
]


def executed(path):
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f)]
    head = next(i for i, r in enumerate(rows) if any("Source" == c.strip() for c in r))
    cols = rows[head]
    src = cols.index("Source")
    count = next(i for i, c in enumerate(cols) if c.strip().startswith("Instructions Executed"))
    opcodes = collections.Counter()
    for r in rows[head + 1:]:
        if len(r) <= max(src, count):
            continue
        text = re.sub(r"^@!?U?P[T0-9]+\s+", "", r[src].strip())
        op = text.split(" ")[0].rstrip(";") if text else ""
        try:
            n = float(r[count].replace(",", ""))
        except ValueError:
            continue
        if op:
            opcodes[op] += n
    return opcodes


def family(op):
    return next((name for name, pat in FAMILIES if re.match(pat, op)), "other")


def main(paths):
    mixes = [executed(p) for p in paths]
    fams = [collections.Counter() for _ in mixes]
    for mix, fam in zip(mixes, fams):
        for op, n in mix.items():
            fam[family(op)] += n
    names = [p.rsplit("/", 1)[-1].replace("-sass.csv", "") for p in paths]
    print(f"{'family (warp instructions, M)':30s}" + "".join(f"{n:>12s}" for n in names) + "   ratio")
    for name in [f for f, _ in FAMILIES] + ["other", "total"]:
        vals = [sum(f.values()) if name == "total" else f[name] for f in fams]
        ratio = f"{vals[-1] / vals[0]:7.2f}" if vals[0] else "      -"
        print(f"{name:30s}" + "".join(f"{v / 1e6:12.2f}" for v in vals) + f"   {ratio}")
    print("\nthe 12 largest opcodes of each")
    for n, mix in zip(names, mixes):
        print(n, ", ".join(f"{op} {v / 1e6:.2f}M" for op, v in mix.most_common(12)))


if __name__ == "__main__":
    main(sys.argv[1:])
