"""A Gatehouse client in another language, built only from proto/.

Compiles proto/gatehouse/v1/gatehouse.proto with grpc_tools, then sends every
case of one conformance file to a running server over the bidi stream (one
stream per agent and session, one event at a time) and prints one JSON line
per case: verdict, reason code, policies and the output decision.

Usage: conformance_client.py --server HOST:PORT --cases FILE.toml --proto DIR
"""

import argparse
import importlib
import json
import os
import queue
import sys
import tempfile
import tomllib

import grpc
from grpc_tools import protoc


def load_stubs(proto_root):
    out = tempfile.mkdtemp(prefix="gatehouse-py-")
    rc = protoc.main([
        "protoc",
        f"-I{proto_root}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        os.path.join(proto_root, "gatehouse/v1/gatehouse.proto"),
    ])
    if rc != 0:
        sys.exit(f"protoc failed with {rc}")
    sys.path.insert(0, out)
    pb = importlib.import_module("gatehouse.v1.gatehouse_pb2")
    grpc_pb = importlib.import_module("gatehouse.v1.gatehouse_pb2_grpc")
    return pb, grpc_pb


def js(value):
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def usage(pb, u):
    u = u or {}
    return pb.Usage(
        input_tokens=u.get("input_tokens", 0),
        output_tokens=u.get("output_tokens", 0),
        cost_micros=u.get("cost_micros", 0),
    )


def to_proto(pb, ev):
    """The flat Gatehouse event JSON (docs/policy-model.md) as a HookEvent."""
    e = pb.HookEvent(
        event_id=ev.get("event_id", ""),
        agent_id=ev.get("agent_id", ""),
        session_id=ev.get("session_id", ""),
        runtime=ev.get("runtime", ""),
    )
    for k, v in (ev.get("metadata") or {}).items():
        e.metadata[k] = v
    kind = ev.get("kind")
    g = ev.get
    if kind == "pre_tool_use":
        e.pre_tool_use.CopyFrom(pb.PreToolUse(tool_name=g("tool_name", ""), input_json=js(g("input")), tool_use_id=g("tool_use_id", ""), cwd=g("cwd", "")))
    elif kind == "post_tool_use":
        e.post_tool_use.CopyFrom(pb.PostToolUse(
            tool_name=g("tool_name", ""), input_json=js(g("input")), tool_use_id=g("tool_use_id", ""),
            cwd=g("cwd", ""), output_json=js(g("output")), is_error=g("is_error", False),
            duration_ms=g("duration_ms", 0), usage=usage(pb, g("usage"))))
    elif kind == "user_prompt":
        e.user_prompt.CopyFrom(pb.UserPrompt(prompt=g("prompt", "")))
    elif kind == "model_request":
        e.model_request.CopyFrom(pb.ModelRequest(model=g("model", ""), provider=g("provider", ""), estimated_input_tokens=g("estimated_input_tokens", 0)))
    elif kind == "model_response":
        e.model_response.CopyFrom(pb.ModelResponse(model=g("model", ""), provider=g("provider", ""), usage=usage(pb, g("usage"))))
    elif kind == "memory_search":
        e.memory_search.CopyFrom(pb.MemorySearch(store=g("store", ""), query=g("query", "")))
    elif kind == "memory_ingest":
        e.memory_ingest.CopyFrom(pb.MemoryIngest(store=g("store", ""), content=g("content", "")))
    elif kind == "memory_compaction":
        e.memory_compaction.CopyFrom(pb.MemoryCompaction(store=g("store", ""), trigger=g("trigger", "")))
    elif kind == "background_task_start":
        e.background_task_start.CopyFrom(pb.BackgroundTaskStart(task_id=g("task_id", ""), description=g("description", ""), command=g("command", "")))
    elif kind == "background_task_finish":
        e.background_task_finish.CopyFrom(pb.BackgroundTaskFinish(task_id=g("task_id", ""), status=g("status", "")))
    elif kind == "install":
        e.install.CopyFrom(pb.Install(name=g("name", ""), source=g("source", ""), version=g("version", "")))
    elif kind == "session_start":
        e.session_start.CopyFrom(pb.SessionStart(source=g("source", "")))
    elif kind == "session_end":
        e.session_end.CopyFrom(pb.SessionEnd(reason=g("reason", "")))
    # Any other kind is left unset: the server must answer unknown_event.
    return e


class Stream:
    """One bidi stream: a hello, then one event at a time."""

    def __init__(self, pb, stub, agent, session, runtime):
        self.pb = pb
        self.q = queue.Queue()
        self.q.put(pb.ClientFrame(hello=pb.Hello(protocol_version=1, agent_id=agent, session_id=session, runtime=runtime)))

        def frames():
            while True:
                f = self.q.get()
                if f is None:
                    return
                yield f

        self.responses = stub.ProcessHookEvent(frames())

    def decide(self, event, correlation_id):
        event.correlation_id = correlation_id
        self.q.put(self.pb.ClientFrame(event=event))
        for frame in self.responses:
            if frame.WhichOneof("frame") == "decision" and frame.decision.correlation_id == correlation_id:
                return frame.decision
        raise RuntimeError("stream ended before the decision")

    def close(self):
        self.q.put(None)


def outcome(pb, d):
    out = {
        "verdict": {pb.VERDICT_ALLOW: "allow", pb.VERDICT_DENY: "deny", pb.VERDICT_ASK: "ask"}.get(d.verdict, "deny"),
        "reason_code": d.reason_code,
        "policies": list(d.policies),
        "output": None,
    }
    if d.HasField("output"):
        o = d.output
        out["output"] = {
            "verdict": {pb.OUTPUT_VERDICT_ALLOW: "allow", pb.OUTPUT_VERDICT_BLOCK: "block",
                        pb.OUTPUT_VERDICT_REDACT: "redact", pb.OUTPUT_VERDICT_ESCALATE: "escalate"}.get(o.verdict, "block"),
            "redacted": json.loads(o.redacted_output_json) if o.redacted_output_json else None,
            "evidence": [f"{e.rule}@{e.path}" for e in o.evidence],
        }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--proto", required=True)
    args = ap.parse_args()
    pb, grpc_pb = load_stubs(args.proto)
    with open(args.cases, "rb") as f:
        cases = tomllib.load(f)
    stem = os.path.splitext(os.path.basename(args.cases))[0]
    channel = grpc.insecure_channel(args.server)
    stub = grpc_pb.HookServiceStub(channel)
    streams = {}
    runtime = cases.get("runtime", "conformance")
    for i, case in enumerate(cases["case"]):
        ev = dict(case["event"])
        ev.setdefault("event_id", f"{stem}-{i}")
        ev["agent_id"] = case.get("agent", cases.get("agent", "agent-1"))
        session = case.get("session") or ev.get("session_id") or cases.get("session", "session-1")
        ev["session_id"] = session
        ev.setdefault("runtime", runtime)
        key = (ev["agent_id"], session)
        if key not in streams:
            streams[key] = Stream(pb, stub, key[0], key[1], runtime)
        d = streams[key].decide(to_proto(pb, ev), f"py{i}")
        print(json.dumps(outcome(pb, d)), flush=True)
    for s in streams.values():
        s.close()


if __name__ == "__main__":
    main()
