# The lldb side of `avail_bench`: one lldb-22 session per fixture build, through lldb's own
# Python API (python3-lldb-22, a dependency of the lldb-22 package). A breakpoint on every
# statement line the harness names (exact line, never moved to the nearest code), one launch of
# the program, and at the first stop on each line every argument and local of the frame: its
# value tree as lldb sees it, or lldb's error ("variable not available", "could not evaluate
# DW_OP_entry_value"). Each breakpoint is deleted at its first hit, so the program then runs on
# at full speed and every line is observed at its first execution, as the agent's `--count 1`.
#
# Why the SB API and not `lldb-22 --batch -o 'frame variable'`: one process for all lines (a
# fresh process per line is a few hundred launches per build), and values as trees (children,
# summaries, errors) instead of text to parse back.
#
# A second mode stops at given addresses instead (the agent's probe addresses), so that the
# agent's values can be compared with lldb's at the very same instruction and execution.
#
# argv: EXE SOURCE SPEC ARG...   SPEC: `L,L,…` (lines) or `L=0xA+0xB,L=…` (each line's link
# addresses). Output: one JSON object per line on stdout, then {"exit": status}.
#
# The program runs with lldb's defaults (ASLR off) and exactly the environment in
# AVAIL_ENV (NUL-separated), as the agent's copy does, so stack and heap addresses agree.
import json
import os
import sys

import lldb

MAX_CHILDREN = 64
MAX_DEPTH = 4


def node(v, depth):
    """A value as lldb shows it: type, value, summary, error, children (not through pointers)."""
    d = {"t": v.GetTypeName() or ""}
    err = v.GetError()
    if not err.Success():
        d["e"] = err.GetCString() or "error"
        return d
    val = v.GetValue()
    if val is not None:
        d["v"] = val
    summary = v.GetSummary()
    if summary is not None:
        d["s"] = summary
    ty = v.GetType()
    if ty.IsPointerType() or ty.IsReferenceType():
        d["p"] = True
    elif depth > 0 and v.MightHaveChildren():
        n = min(v.GetNumChildren(), MAX_CHILDREN)
        d["c"] = [[c.GetName() or "", node(c, depth - 1)] for c in (v.GetChildAtIndex(i) for i in range(n))]
    return d


def frame_vars(frame):
    # lldb lists outer blocks first; where a name is declared again in an inner block, the
    # inner one is what the name means at this line (and what the agent captures), so it wins.
    out = {}
    for v in frame.GetVariables(True, True, False, True):
        name = v.GetName()
        if not name:
            continue
        item = {"name": name, "text": " ".join(str(v).split())[:300]}
        item.update(node(v, MAX_DEPTH))
        out.pop(name, None)
        out[name] = item
    return list(out.values())


def main():
    exe, source, spec = sys.argv[1], sys.argv[2], [x for x in sys.argv[3].split(",") if x]
    args = sys.argv[4:]
    addrs = {}
    for item in spec:
        line, _, where = item.partition("=")
        addrs[int(line)] = [int(a, 16) for a in where.split("+") if a]
    lines = list(addrs)
    by_address = any(addrs.values())
    dbg = lldb.SBDebugger.Create()
    dbg.SetAsync(False)
    target = dbg.CreateTarget(exe)
    if not target.IsValid():
        print(json.dumps({"fatal": "lldb cannot create a target for " + exe}))
        return 1
    by_id = {}
    result = {}
    module = target.GetModuleAtIndex(0)
    for line in lines:
        if by_address:
            bps = [target.BreakpointCreateBySBAddress(module.ResolveFileAddress(a)) for a in addrs[line]]
        else:
            bps = [target.BreakpointCreateByLocation(lldb.SBFileSpec(source), line, 0, 0, lldb.SBFileSpecList(), False)]
        bps = [bp for bp in bps if bp.IsValid()]
        n = sum(bp.GetNumLocations() for bp in bps)
        result[line] = {"line": line, "locations": n, "stop": None}
        for bp in bps:
            if bp.GetNumLocations() == 0:
                target.BreakpointDelete(bp.GetID())
            else:
                by_id[bp.GetID()] = line

    info = lldb.SBLaunchInfo(args)
    info.AddOpenFileAction(1, "/dev/null", False, True)
    info.SetEnvironmentEntries([e for e in os.environ.get("AVAIL_ENV", "").split("\0") if e], False)
    info.SetLaunchFlags(info.GetLaunchFlags() | lldb.eLaunchFlagStopAtEntry)
    err = lldb.SBError()
    process = target.Launch(info, err)
    if not err.Success() or not process.IsValid():
        print(json.dumps({"fatal": "lldb cannot launch " + exe + ": " + str(err)}))
        return 1
    # Go preempts goroutines with SIGURG; none of these signals is a stop worth recording.
    ret = lldb.SBCommandReturnObject()
    for sig in ("SIGURG", "SIGPIPE", "SIGCHLD", "SIGPROF", "SIGWINCH"):
        dbg.GetCommandInterpreter().HandleCommand("process handle -p true -s false -n false " + sig, ret)
    process.Continue()
    while process.GetState() == lldb.eStateStopped and by_id:
        for thread in process:
            if thread.GetStopReason() != lldb.eStopReasonBreakpoint:
                continue
            # (breakpoint id, location id) pairs: every breakpoint at this address, e.g. two
            # lines whose first rows share it.
            ids = [thread.GetStopReasonDataAtIndex(i) for i in range(0, thread.GetStopReasonDataCount(), 2)]
            frame = thread.GetFrameAtIndex(0)
            stop = None
            for bp_id in ids:
                line = by_id.get(bp_id)
                if line is None or result[line]["stop"] is not None:
                    continue
                if stop is None:
                    stop = {
                        "pc": "0x%x" % frame.GetPCAddress().GetFileAddress(),
                        "function": frame.GetFunctionName() or "",
                        "vars": frame_vars(frame),
                    }
                result[line]["stop"] = stop
                # Every breakpoint of the line goes at its first stop (one per copy).
                for other in [b for b, l in by_id.items() if l == line]:
                    del by_id[other]
                    target.BreakpointDelete(other)
        process.Continue()
    for line in lines:
        print(json.dumps(result[line]))
    state = process.GetState()
    if state != lldb.eStateExited:
        process.Kill()
    print(json.dumps({"exit": process.GetExitStatus()}))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
