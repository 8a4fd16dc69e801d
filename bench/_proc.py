"""Process facts from ``/proc`` the benchmarks read: peak memory, CPU time, the process tree."""

from __future__ import annotations

import os

__all__ = ["children_of", "cpu_seconds", "java_pid", "process_table", "vm_hwm_mb"]


def vm_hwm_mb(pid: int | str = "self") -> float:
    """Peak resident set size (``VmHWM``) of process ``pid``, in MB."""
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def process_table() -> dict[int, tuple[str, int, float]]:
    """Every process: pid -> (name, parent pid, CPU-seconds incl. reaped children), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[str, int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                stat = fh.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[1] is the parent; utime, stime and the same for reaped children follow at 11-14
        table[int(entry)] = (name, int(fields[1]), sum(int(f) for f in fields[11:15]) / tick)
    return table


def children_of(table: dict[int, tuple[str, int, float]]) -> dict[int, list[int]]:
    """Parent pid -> its children, for the processes of ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (_, ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    return children


def java_pid() -> int | None:
    """The JVM started by this process's Spark session: a descendant process named java."""
    table = process_table()
    children = children_of(table)
    todo = [os.getpid()]
    while todo:
        pid = todo.pop()
        for child in children.get(pid, []):
            if table[child][0] == "java":
                return child
            todo.append(child)
    return None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
