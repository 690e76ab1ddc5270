"""The LLM judge against a deterministic OpenAI-compatible server on 127.0.0.1 (started in the test)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cwpo.errors import ConfigError, CwpoError
from cwpo.evaluation.llm_judge import LLMJudge, LLMJudgeConfig, parse_verdict
from cwpo.evaluation.metrics import pairwise_accuracy

_RESPONSES = re.compile(r"Response A:\n(.*?)\n\nResponse B:\n(.*?)\n\nWhich", re.DOTALL)


def prefers_helpful(content: str) -> str:
    """Prefers the response that says 'helpful'; with none or both, answers 'A' (a pure position bias)."""
    a, b = _RESPONSES.search(content).groups()
    verdict = "B" if ("helpful" in b and "helpful" not in a) else "A"
    return f"Comparison: one of them is better.\nPreferred: {verdict}"


@pytest.fixture
def server() -> Iterator[Callable]:
    """Start a chat-completions server whose reply comes from ``state['reply'](content)``; yield its URL maker."""
    state: dict = {"reply": prefers_helpful, "requests": [], "fail_first": 0, "status": 500}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 (http.server's name)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state["requests"].append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
            if state["fail_first"] > 0:
                state["fail_first"] -= 1
                self.send_response(state["status"])
                self.end_headers()
                self.wfile.write(b'{"error": "try again"}')
                return
            content = body["messages"][0]["content"]
            answer = {"choices": [{"message": {"role": "assistant", "content": state["reply"](content)}}]}
            payload = json.dumps(answer).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()

    def judge(**overrides) -> LLMJudge:
        config = {"base_url": f"http://127.0.0.1:{httpd.server_address[1]}/v1", "model": "judge-1", **overrides}
        return LLMJudge(LLMJudgeConfig(**config))

    judge.state = state
    yield judge
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


def test_both_orders_cancel_position_bias(server):
    prompts = ["\n\nHuman: hi\n\nAssistant:", "q2", "q3"]
    responses_a = ["a helpful reply", "meh", "x"]
    responses_b = ["rude", "so helpful", "y"]
    judge = server(api_key="sk-test", max_workers=2)
    margins = judge.compare(prompts, responses_a, responses_b)
    # pair 0: A wins in both orders; pair 1: B wins in both; pair 2: the judge said "A" twice (position only)
    assert margins.tolist() == [1.0, -1.0, 0.0]
    result = pairwise_accuracy(margins)
    assert (result.n_wins, result.n_ties, result.n_losses) == (1, 1, 1)
    requests = server.state["requests"]
    assert len(requests) == 6 and {r["path"] for r in requests} == {"/v1/chat/completions"}
    assert all(r["auth"] == "Bearer sk-test" for r in requests)
    assert all(r["body"]["model"] == "judge-1" and r["body"]["temperature"] == 0.0 for r in requests)
    assert judge.n_unparsed == 0


def test_single_order_and_no_auth_header(server):
    judge = server(both_orders=False)
    assert judge.compare(["q"], ["x"], ["helpful"]).tolist() == [-1.0]
    assert server.state["requests"][0]["auth"] is None


def test_unparsable_replies_are_no_votes(server):
    server.state["reply"] = lambda content: "I cannot decide."
    judge = server()
    assert judge.compare(["q", "r"], ["x", "y"], ["z", "w"]).tolist() == [0.0, 0.0]
    assert judge.n_unparsed == 4


def test_retries_server_errors_then_succeeds(server):
    server.state["fail_first"] = 2
    judge = server(retries=2, retry_wait_s=0.01, both_orders=False, max_workers=1)
    assert judge.compare(["q"], ["helpful"], ["x"]).tolist() == [1.0]
    assert len(server.state["requests"]) == 3


def test_client_errors_fail_at_once(server):
    server.state["fail_first"], server.state["status"] = 5, 400
    judge = server(retries=3, retry_wait_s=0.01, both_orders=False)
    with pytest.raises(CwpoError, match="HTTP 400"):
        judge.compare(["q"], ["a"], ["b"])
    assert len(server.state["requests"]) == 1


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("Comparison: A is long.\nPreferred: B", "B"),
        ("preferred: **A**", "A"),
        ("Preferred: Response B", "B"),
        ("A", "A"),
        ('"B".', "B"),
        ("Preferred: A\n...on reflection\nPreferred: B", "B"),
        ("I cannot decide", None),
        ("A is better than B", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_template_must_have_its_fields():
    with pytest.raises(ConfigError):
        LLMJudgeConfig(base_url="http://x", model="m", template="no fields")


def test_load_judge_builds_the_llm_judge_the_pipeline_asks_for(server):
    """``eval.judge: {kind: llm, base_url, model}`` goes through ``load_judge`` (as the pipeline calls it) to a working
    LLMJudge against the local stand-in server; bad settings are one clear ConfigError."""
    from cwpo.evaluation.judges import judge_compare, load_judge

    base_url = server().config.base_url
    judge = load_judge("llm", None, base_url=base_url, model="judge-1", max_workers=2)
    assert isinstance(judge, LLMJudge) and judge.config.max_workers == 2
    margins = judge_compare(judge, ["q1", "q2"], ["a helpful answer", "same"], ["no", "same"])
    assert margins.tolist() == [1.0, 0.0]  # "helpful" wins in both orders; identical answers tie
    assert {r["body"]["model"] for r in server.state["requests"]} == {"judge-1"}
    with pytest.raises(ConfigError, match=r"missing \['model'\]"):
        load_judge("llm", None, base_url=base_url)
    with pytest.raises(ConfigError, match=r"unknown settings \['temprature'\]"):
        load_judge("llm", None, base_url=base_url, model="m", temprature=0.0)
    with pytest.raises(ConfigError, match="takes no model spec"):
        load_judge("llm", {"name_or_path": "x"}, base_url=base_url, model="m")
