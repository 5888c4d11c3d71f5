"""Reading bench/run.sh's results file, for render_table.py and check_ratios.py.

The file holds one "impl<TAB>metric<TAB>value" line per measurement (run.sh's record).
"""
from collections import defaultdict


def num(value):
    """The value as a number, or None ("n/a", missing)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def read(path):
    """({impl: {metric: value}}, ["- impl: note", ...]), with rss_total (KiB) added where
    both sides' peak RSS was measured."""
    results, notes = defaultdict(dict), []
    for line in open(path):
        parts = line.rstrip("\n").split("\t")
        if len(parts) == 3:
            if parts[1] == "note":
                notes.append(f"- {parts[0]}: {parts[2]}")
            else:
                results[parts[0]][parts[1]] = parts[2]
    for figures in results.values():
        client, server = num(figures.get("rss_client")), num(figures.get("rss_server"))
        if client is not None and server is not None:
            figures["rss_total"] = str(client + server)
    return results, notes
