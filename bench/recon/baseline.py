#!/usr/bin/python3
"""bench/recon/baseline.py: the reconciliation a finance analyst would write
instead of paybridge, a pandas merge on the same files, timed for comparison.

    /usr/bin/python3 bench/recon/baseline.py settlement.csv ledger.csv

Prints one JSON line: parse, match and total seconds, peak RSS, and its own
count of exact reference matches with a fingerprint (the sum over pairs of
settlement line << 32 + ledger line, mod 2**64). bench/run.sh checks that
both numbers equal the engine's and the generator's manifest.

What it does is rule 1 of src/recon, written the way an analyst would, with
the same conventions so that "the same exact matches" is a fair check:

  * duplicates are left out: the second and later settlement lines with a
    transactionId, the second and later ledger records with a posted gateway
    reference, and ledger records without one that repeat the reference,
    direction (money in or out), amount and currency of an earlier one;
  * step a: merge on transactionId (settlement gateway_ref = ledger
    gateway_ref); a pair is exact when amount and currency are equal;
  * step b: for lines step a did not pair, merge on merchant reference =
    ledger reference, among ledger records without a gateway reference, when
    the reference names exactly one line and one record in that direction.

It does none of rules 2 to 7 and classifies no breaks: that is the point of
the comparison, the analyst's merge is the cheap part. Amounts are compared as
the decimal text the files hold (both sides write canonical decimals), so
no float touches money here either. Line numbers are the pandas row index + 2
(the header is line 1), valid because the generated files have no quoted line
breaks.

Rejected: comparing floats (an analyst would, and it happens to work on
canonical text, but it is not a habit to teach); pyarrow's CSV reader (not in
Debian's python3-pandas, and the baseline must run from Debian's packages).
"""
import json
import resource
import sys
import time

import pandas as pd

IN, OUT, OTHER = "in", "out", "other"
LINE_DIR = {"sale": IN, "refund": OUT, "chargeback": OUT, "fee": OTHER, "adjustment": OTHER}
RECORD_DIR = {"payment": IN, "refund": OUT, "credit_note": OUT, "journal": OTHER}


def main():
    if len(sys.argv) != 3:
        print("usage: baseline.py settlement.csv ledger.csv", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    s = pd.read_csv(sys.argv[1], dtype=str, keep_default_na=False)
    l = pd.read_csv(sys.argv[2], dtype=str, keep_default_na=False)
    t1 = time.monotonic()

    s["row"] = s.index + 2
    l["row"] = l.index + 2
    s = s[s["record"] == "line"]
    s = s.assign(dir=s["kind"].map(LINE_DIR))
    l = l.assign(dir=l["kind"].map(RECORD_DIR))

    # duplicates out (first occurrence kept)
    s_gw = s["gateway_ref"] != ""
    s_nd = s[~(s_gw & s.duplicated("gateway_ref"))]
    l_gw = l["gateway_ref"] != ""
    l_dup = l_gw & l.duplicated("gateway_ref")
    posted = l[~l_gw & (l["reference"] != "")]
    l_dup_posted = posted.duplicated(["reference", "dir", "amount", "currency"])
    l_dup = l_dup | l.index.isin(posted.index[l_dup_posted])
    l_nd = l[~l_dup]

    # step a: transactionId
    a = s_nd[s_nd["gateway_ref"] != ""].merge(
        l_nd[l_nd["gateway_ref"] != ""], on="gateway_ref", suffixes=("_s", "_l"))
    exact_a = a[(a["amount_s"] == a["amount_l"]) & (a["currency_s"] == a["currency_l"])]

    # step b: merchant reference, unique on both sides in its direction
    keyed = s_nd[(s_nd["merchant_ref"] != "") & (s_nd["dir"] != OTHER)]
    line_n = keyed.groupby(["merchant_ref", "dir"])["row"].transform("size")
    s_rest = keyed[(line_n == 1) & ~keyed["row"].isin(a["row_s"])]
    cand = l_nd[(l_nd["gateway_ref"] == "") & (l_nd["reference"] != "") & (l_nd["dir"] != OTHER)]
    rec_n = cand.groupby(["reference", "dir"])["row"].transform("size")
    l_one = cand[rec_n == 1]
    b = s_rest.merge(l_one, left_on=["merchant_ref", "dir"], right_on=["reference", "dir"],
                     suffixes=("_s", "_l"))
    exact_b = b[(b["amount_s"] == b["amount_l"]) & (b["currency_s"] == b["currency_l"])]
    t2 = time.monotonic()

    rows_s = int(exact_a["row_s"].sum()) + int(exact_b["row_s"].sum())
    rows_l = int(exact_a["row_l"].sum()) + int(exact_b["row_l"].sum())
    print(json.dumps({
        "tool": "pandas " + pd.__version__,
        "lines": int(len(s)), "records": int(len(l)),
        "parse_s": round(t1 - t0, 3), "match_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3),
        "peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "exact_reference_matches": int(len(exact_a) + len(exact_b)),
        "exact_reference_fingerprint": ((rows_s << 32) + rows_l) % (1 << 64),
    }, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
