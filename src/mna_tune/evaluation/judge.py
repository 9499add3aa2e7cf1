"""The optional LLM judge (`evaluate.judge.enabled`): any OpenAI-compatible chat endpoint
rates the base model and the adapter on every generated test row.

Two judgements per row, both asked with `response_format` {"type": "json_schema"} and read
by validating the reply against the same pydantic model (never by pattern matching):

- pairwise: base vs adapter, asked twice with the answers' positions swapped (first A =
  base, B = adapter; then A = adapter, B = base). Each order gives the adapter a win, tie or
  loss. They combine as follows: the adapter **wins** a row only when it wins in both
  orders and **loses** it only when it loses in both; anything else is a **tie**. When the
  two orders name opposite winners (a win in one, a loss in the other: the judge preferred
  the same *position* both times) the row is a tie and counts as **position-biased**. A
  win or loss in one order and a tie in the other is a tie too, counted as an order
  disagreement but not as a flip. Identical answers (after whitespace and case
  normalisation) are a tie without a request.
- rubric: each answer on its own, 1-5 on four criteria (accuracy against the reference,
  natural Korean, terminology, completeness) with a short reason. An empty answer scores 1
  on every criterion without a request.

The endpoint, model and key come from the environment only: MNA_TUNE_JUDGE_BASE_URL,
MNA_TUNE_JUDGE_MODEL, MNA_TUNE_JUDGE_API_KEY, or, when MNA_TUNE_JUDGE_BASE_URL is unset, the
`llm` scorer's MNA_TUNE_LLM_* trio (the three variables are taken from one family, so a key
is never sent to another family's endpoint). Verdicts are cached by content hash (kind,
question, reference, answers in their positions, judge model, prompt text and reply
schema) in <repo root>/<paths.cache>/judge.sqlite, committed one by one as they arrive, so a
rerun, or a run after a failure, only asks what is new. A request whose every attempt got
an unreadable reply (off the schema, or JSON cut off at max_tokens) makes its row
**failed**: counted in `failed_rows`, in no other figure, not cached. A request the
endpoint itself fails (HTTP errors, no connection) after its retries stops the judging with
one line naming the endpoint (never its key or user info); the evaluate stage judges
before it writes any output.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import InputError, require_regular_file
from ..llm_endpoint import (
    ChatClient,
    Endpoint,
    Retryable,
    one_line,
    open_cache,
    select_keys,
)
from ..workspace import project_root
from .korean_metrics import normalise_answer

if TYPE_CHECKING:
    import httpx

    from ..params import Params

ENV_BASE_URL = "MNA_TUNE_JUDGE_BASE_URL"
ENV_MODEL = "MNA_TUNE_JUDGE_MODEL"
ENV_API_KEY = "MNA_TUNE_JUDGE_API_KEY"
FALLBACK_BASE_URL = "MNA_TUNE_LLM_BASE_URL"  # the `llm` scorer's endpoint
FALLBACK_MODEL = "MNA_TUNE_LLM_MODEL"
FALLBACK_API_KEY = "MNA_TUNE_LLM_API_KEY"

CACHE_FILE = "judge.sqlite"  # under <repo root>/<paths.cache>
CRITERIA = ("accuracy", "korean", "terminology", "completeness")
CRITERION_LABELS = {
    "accuracy": "accuracy against the reference",
    "korean": "natural Korean",
    "terminology": "terminology",
    "completeness": "completeness",
}
OUTCOMES = ("win", "tie", "loss")  # the adapter's, against the base model
MODELS = ("base", "adapter")

_PLACEHOLDER = re.compile(r"\{(question|reference|answer|answer_a|answer_b)\}")
_PLACEHOLDERS = {
    "pairwise": ("{question}", "{reference}", "{answer_a}", "{answer_b}"),
    "rubric": ("{question}", "{reference}", "{answer}"),
}
BACKOFF_S = 1.0  # first pause between attempts, doubled each time (tests make it tiny)
_SCHEMA = """CREATE TABLE IF NOT EXISTS verdicts (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    reply TEXT NOT NULL,
    model TEXT NOT NULL)"""
_EMPTY_REASON = "빈 답변: 채점할 내용이 없습니다."  # an empty answer's rubric reason (no request)
_IDENTICAL_REASON = "두 답변이 같습니다."  # identical answers' pairwise reason (no request)


# ---- the reply schemas: sent as response_format and used to read the replies ----


class PairwiseVerdict(BaseModel):
    """The judge's answer to one pairwise question (one order)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(description="판정 이유 (한두 문장)")
    winner: Literal["A", "B", "tie"] = Field(description="더 나은 답변: A, B 또는 tie (비슷함)")


Score = Literal[1, 2, 3, 4, 5]


class RubricScores(BaseModel):
    """The judge's scores for one answer."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(description="채점 이유 (한두 문장)")
    accuracy: Score = Field(description="참고 답변 대비 정확성 (1-5)")
    korean: Score = Field(description="자연스러운 한국어 (1-5)")
    terminology: Score = Field(description="M&A·금융·법률 용어 사용 (1-5)")
    completeness: Score = Field(description="완결성 (1-5)")


_REPLIES: dict[str, type[BaseModel]] = {"pairwise": PairwiseVerdict, "rubric": RubricScores}


def response_format(kind: str) -> dict:
    model = _REPLIES[kind]
    return {
        "type": "json_schema",
        "json_schema": {"name": f"{kind}_verdict", "strict": True, "schema": model.model_json_schema()},
    }


# ---- errors ----


class JudgeConfigError(ValueError):
    """The judge is enabled but the environment does not say where it is."""


class JudgeError(ValueError):
    """The judge endpoint failed: one line naming the endpoint, never its key."""


@dataclass(frozen=True)
class Unreadable:
    """Every attempt at one request got a reply that does not match its schema (malformed or
    truncated JSON, a model that fills a JSON grammar with whitespace until max_tokens): the
    row is counted as failed, never cached, and asked again by the next run."""

    detail: str


# ---- the prompts ----


def load_template(path: Path, kind: str) -> str:
    require_regular_file(path, f"evaluate.judge.{kind}_prompt_path")
    try:
        template = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(str(path), f"judge prompt not found (evaluate.judge.{kind}_prompt_path)") from None
    missing = [name for name in _PLACEHOLDERS[kind] if name not in template]
    if missing:
        raise InputError(str(path), f"the judge prompt lacks the placeholder(s) {', '.join(missing)}")
    return template


def render(template: str, **values: str) -> str:
    # One pass, so an answer that itself contains "{reference}" is not substituted again;
    # no str.format, so the braces of the JSON example survive.
    return _PLACEHOLDER.sub(lambda found: values[found.group(1)], template)


# ---- what one request is ----


@dataclass(frozen=True)
class Request:
    kind: str  # pairwise | rubric
    prompt: str
    key: str
    where: str  # for messages: the row and the question asked


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()


def prompt_version(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]


@dataclass(eq=False)
class Judge:
    client: ChatClient
    pairwise_template: str = field(repr=False)
    rubric_template: str = field(repr=False)
    cache_path: Path
    progress: bool = True

    @classmethod
    def from_params(
        cls, params: Params, environ: Mapping[str, str] = os.environ, *, backoff_s: float | None = None
    ) -> Judge | None:
        """The judge, or None when `evaluate.judge.enabled` is false. Checks the environment
        and the prompts at once, before any model runs."""
        cfg = params.evaluate.judge
        if not cfg.enabled:
            return None
        endpoint = Endpoint.from_env(
            environ,
            [(ENV_BASE_URL, ENV_MODEL, ENV_API_KEY), (FALLBACK_BASE_URL, FALLBACK_MODEL, FALLBACK_API_KEY)],
            "evaluate.judge.enabled is true",
            JudgeConfigError,
        )
        cache = Path(params.paths.cache)
        return cls(
            client=ChatClient(
                endpoint,
                concurrency=cfg.concurrency,
                timeout_s=cfg.timeout_s,
                max_tokens=cfg.max_tokens,
                backoff_s=BACKOFF_S if backoff_s is None else backoff_s,
                hints={
                    400: " (the endpoint must support response_format json_schema: "
                    "vLLM, SGLang, llama.cpp and OpenAI do)"
                },
            ),
            pairwise_template=load_template(cfg.pairwise_prompt_path, "pairwise"),
            rubric_template=load_template(cfg.rubric_prompt_path, "rubric"),
            # under the repository root, so `dvc exp run --temp/--queue` copies share one cache
            cache_path=(cache if cache.is_absolute() else project_root() / cache) / CACHE_FILE,
        )

    @property
    def model(self) -> str:
        return self.client.endpoint.model

    @property
    def versions(self) -> dict[str, str]:
        return {"pairwise": prompt_version(self.pairwise_template), "rubric": prompt_version(self.rubric_template)}

    # ---- the two questions ----

    def _key(self, kind: str, *fields: str) -> str:
        template = self.pairwise_template if kind == "pairwise" else self.rubric_template
        schema = json.dumps(_REPLIES[kind].model_json_schema(), sort_keys=True)
        return _digest(kind, self.model, template, schema, *fields)

    def pairwise_request(self, question: str, reference: str, answer_a: str, answer_b: str, where: str) -> Request:
        prompt = render(
            self.pairwise_template, question=question, reference=reference, answer_a=answer_a, answer_b=answer_b
        )
        return Request("pairwise", prompt, self._key("pairwise", question, reference, answer_a, answer_b), where)

    def rubric_request(self, question: str, reference: str, answer: str, where: str) -> Request:
        prompt = render(self.rubric_template, question=question, reference=reference, answer=answer)
        return Request("rubric", prompt, self._key("rubric", question, reference, answer), where)

    # ---- judging rows ----

    def judge_rows(self, rows: list[dict]) -> list[dict]:
        """Per row ({id, question, reference, base, adapter}): its pairwise and rubric
        judgements (see `combine` and the module docstring)."""
        plans, requests = [], {}
        for row in rows:
            plan = self._plan(row)
            plans.append(plan)
            requests.update({request.key: request for request in plan["requests"]})
        replies = self._answers(list(requests.values()))
        return [self._assemble(plan, replies) for plan in plans]

    def _plan(self, row: dict) -> dict:
        question, reference, base, adapter = row["question"], row["reference"], row["base"], row["adapter"]
        where = f"test row {row['id']}"
        plan: dict = {"requests": [], "identical": normalise_answer(base) == normalise_answer(adapter)}
        if not plan["identical"]:
            # first order: A = base, B = adapter; second: A = adapter, B = base
            plan["orders"] = [
                self.pairwise_request(question, reference, base, adapter, f"{where}, pairwise (A = base)"),
                self.pairwise_request(question, reference, adapter, base, f"{where}, pairwise (A = adapter)"),
            ]
            plan["requests"] += plan["orders"]
        for name, answer in (("base", base), ("adapter", adapter)):
            if answer.strip():
                plan[name] = self.rubric_request(question, reference, answer, f"{where}, rubric ({name})")
                plan["requests"].append(plan[name])
            else:
                plan[name] = None
        return plan

    @staticmethod
    def _assemble(plan: dict, replies: dict[str, Any]) -> dict:
        failed = [replies[r.key].detail for r in plan["requests"] if isinstance(replies[r.key], Unreadable)]
        if failed:
            return {"failed": failed[0]}
        if plan["identical"]:
            pairwise = {
                "verdict": "tie",
                "orders": None,
                "position_flip": False,
                "identical": True,
                "reasons": [_IDENTICAL_REASON],
            }
        else:
            first, second = (replies[request.key] for request in plan["orders"])
            outcomes = [adapter_outcome(first.winner, "B"), adapter_outcome(second.winner, "A")]
            verdict, flip = combine(*outcomes)
            pairwise = {
                "verdict": verdict,
                "orders": outcomes,
                "position_flip": flip,
                "identical": False,
                "reasons": [one_line(first.reason), one_line(second.reason)],
            }
        rubric = {}
        for name in MODELS:
            request = plan[name]
            if request is None:
                rubric[name] = {**{criterion: 1 for criterion in CRITERIA}, "reason": _EMPTY_REASON}
            else:
                scores = replies[request.key]
                rubric[name] = {
                    **{criterion: getattr(scores, criterion) for criterion in CRITERIA},
                    "reason": one_line(scores.reason),
                }
        return {"pairwise": pairwise, "rubric": rubric}

    # ---- the cache and the endpoint ----

    def _answers(self, requests: list[Request]) -> dict[str, Any]:
        with open_cache(self.cache_path, _SCHEMA, "judge cache", "ask the judge again") as db:
            replies: dict[str, Any] = dict(_lookup(db, requests))
            missing = [request for request in requests if request.key not in replies]

            def ask_one(client: httpx.Client, request: Request) -> BaseModel | Unreadable:
                unreadable = 0

                def read(content: str) -> BaseModel:
                    nonlocal unreadable
                    try:
                        return self._read(request.kind, content)
                    except Retryable:
                        unreadable += 1
                        raise

                try:
                    return self.client.ask(
                        client,
                        lambda: self.client.body(request.prompt, response_format=response_format(request.kind)),
                        read,
                        "verdict",
                        lambda detail: JudgeError(one_line(f"LLM judge, {request.where}: {detail}")),
                    )
                except JudgeError as error:
                    if unreadable == self.client.attempts:  # the endpoint answered, never readably
                        return Unreadable(str(error))
                    raise  # the endpoint itself failed: stop, with one line

            def keep(request: Request, reply: BaseModel | Unreadable) -> None:
                if isinstance(reply, Unreadable):
                    replies[request.key] = reply
                    return
                db.execute(
                    "INSERT OR REPLACE INTO verdicts (key, kind, reply, model) VALUES (?, ?, ?, ?)",
                    (request.key, request.kind, reply.model_dump_json(), self.model),
                )
                replies[request.key] = reply

            if missing:
                self.client.ask_all(missing, ask_one, keep, progress="judge" if self.progress else None)
        return replies

    def _read(self, kind: str, content: str) -> Any:
        try:
            reply: Any = _REPLIES[kind].model_validate_json(content)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'reply'}: {e['msg']}" for e in exc.errors())
            raise Retryable(
                f"the reply does not match the {kind} schema ({problems}): {self.client.quote(content)}"
            ) from None
        return reply.model_copy(update={"reason": self.client.scrub(reply.reason)})  # stored and shown later


# ---- combining and summarising verdicts (pure) ----


def adapter_outcome(winner: str, adapter_position: str) -> str:
    """The adapter's outcome in one order, from the judge's `winner` (A, B or tie)."""
    if winner == "tie":
        return "tie"
    return "win" if winner == adapter_position else "loss"


def combine(first: str, second: str) -> tuple[str, bool]:
    """(the row's verdict, whether the swap flipped it) from the adapter's outcomes in the
    two orders: a win needs a win in both, a loss a loss in both, all else is a tie; a win
    in one order and a loss in the other (the same position preferred twice) is a
    position-biased tie."""
    if first == second:
        return first, False
    return "tie", {first, second} == {"win", "loss"}


def summarise(judged: list[dict]) -> dict:
    """Figures over judged rows: {"pairwise": {...}, "rubric": {"base": {...}, "adapter": {...}}}.
    Rows whose replies could not be read count as failed and in no other figure."""
    failed = sum(1 for row in judged if "failed" in row)
    judged = [row for row in judged if "failed" not in row]
    n = len(judged)
    if not n:
        return {"pairwise": {"rows": 0, "failed_rows": failed}, "rubric": {}} if failed else {}
    verdicts = [row["pairwise"]["verdict"] for row in judged]
    asked = [row["pairwise"] for row in judged if not row["pairwise"]["identical"]]
    pairwise = {f"{outcome}_rate": round(verdicts.count(outcome) / n, 6) for outcome in OUTCOMES}
    pairwise.update(rows=n, identical_rows=n - len(asked), failed_rows=failed)
    if asked:  # of the rows asked in both orders
        pairwise["position_bias"] = round(sum(p["position_flip"] for p in asked) / len(asked), 6)
        pairwise["order_disagreement"] = round(sum(p["orders"][0] != p["orders"][1] for p in asked) / len(asked), 6)
    rubric = {}
    for name in MODELS:
        means = {criterion: sum(row["rubric"][name][criterion] for row in judged) / n for criterion in CRITERIA}
        rubric[name] = {
            **{key: round(value, 6) for key, value in means.items()},
            "mean": round(sum(means.values()) / len(CRITERIA), 6),
        }
    return {"pairwise": pairwise, "rubric": rubric}


def model_figures(summary: dict) -> dict[str, dict[str, float]]:
    """The judge's figures per model, beside the other metrics (and usable by the gate):
    judge_win_rate (the base model's is the adapter's loss rate: how often the base wins),
    judge_rubric_mean and judge_rubric_<criterion>."""
    if not summary or not summary["rubric"]:  # nothing judged (or every row failed): no figure
        return {name: {} for name in MODELS}
    pairwise = summary["pairwise"]
    out = {"adapter": {"judge_win_rate": pairwise["win_rate"]}, "base": {"judge_win_rate": pairwise["loss_rate"]}}
    for name in MODELS:
        rubric = summary["rubric"][name]
        out[name]["judge_rubric_mean"] = rubric["mean"]
        out[name].update({f"judge_rubric_{criterion}": rubric[criterion] for criterion in CRITERIA})
    return out


def _add_figures(section: dict, judged: list[dict]) -> None:
    """Adds the judge's per-model figures and their deltas to an {adapter, base, delta} dict."""
    figures = model_figures(summarise(judged))
    for name in MODELS:
        section[name].update(figures[name])
    section["delta"].update(
        {
            key: round(value - figures["base"][key], 6)
            for key, value in figures["adapter"].items()
            if key in figures["base"]
        }
    )


def apply(result, judged: list[dict], judge: Judge) -> None:
    """Writes the judgements into an evaluation (evaluate.Evaluation): per-model figures in
    overall and per group, the pairwise figures under overall["judge"], and each row's
    verdicts and reasons in its prediction row."""
    from .scoring import groups_of

    _add_figures(result.overall, judged)
    summary = summarise(judged)
    result.overall["judge"] = {**summary.get("pairwise", {}), "model": judge.model, "prompt_versions": judge.versions}
    generated = len(judged)
    for kind, members in groups_of(result.generated).items():
        for value, indices in members.items():
            group = result.by_group.get(kind, {}).get(value)
            if group is not None:
                _add_figures(group, [judged[i] for i in indices if i < generated])
    for prediction, row in zip(result.predictions, judged, strict=True):
        if "failed" in row:
            prediction.update({"judge_verdict": "failed", "judge_failure": row["failed"]})
            continue
        pairwise = row["pairwise"]
        prediction.update(
            {
                "judge_verdict": pairwise["verdict"],
                "judge_orders": pairwise["orders"],
                "judge_position_flip": pairwise["position_flip"],
                "judge_reasons": pairwise["reasons"],
                "base_rubric": row["rubric"]["base"],
                "adapter_rubric": row["rubric"]["adapter"],
            }
        )


def judge_evaluation(judge: Judge | None, result) -> None:
    """The evaluate stage's judging step (nothing when the judge is disabled)."""
    if judge is None:
        return
    rows = [
        {key: prediction[key] for key in ("id", "question", "reference", "base", "adapter")}
        for prediction in result.predictions
    ]
    apply(result, judge.judge_rows(rows), judge)
    figures = result.overall["judge"]
    print(
        f"evaluate: judge {judge.model} on {figures.get('rows', 0)} rows: adapter wins "
        f"{figures.get('win_rate')}, ties {figures.get('tie_rate')}, loses {figures.get('loss_rate')}; position "
        f"bias {figures.get('position_bias', '–')}; {figures.get('failed_rows', 0)} rows failed (unreadable "
        f"replies); {judge.client.requests_sent} requests sent, the rest from {judge.cache_path}"
    )


# ---- the sqlite cache ----


def _lookup(db, requests: list[Request]) -> dict[str, BaseModel]:
    kinds = {request.key: request.kind for request in requests}
    found: dict[str, BaseModel] = {}
    for key, reply in select_keys(db, "SELECT key, reply FROM verdicts WHERE key IN", list(kinds)):
        with contextlib.suppress(ValidationError):  # unreadable: asked again
            found[key] = _REPLIES[kinds[key]].model_validate_json(reply)
    return found
