"""Narration refining: the rules backend on realistic narrations, the openai backend against a local server."""

from __future__ import annotations

import argparse
import json
import logging
import pickle
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ophora.core.config import add_options, from_args
from ophora.curate.refine import RefineConfig, make_refiner
from ophora.core.endpoint import API_KEY_ENV
from ophora.core.errors import EndpointError
from ophora.curate.refine_llm import LLMAnswerError, load_prompt
from ophora.curate.refine_rules import action_base, refine_narration, verb_form
from ophora.core.errors import ConfigError, InputError, OphoraError

# ---------------------------------------------------------------------------------------------- rules backend

# The narration of the paper's figure (ophora.md section 1) and the paper's instruction for it.
PAPER_NARRATION = (
    "Be careful during cortical removal to prevent zonular stress, especially in cases with weak zonules. "
    "It's important to manage aspiration carefully to avoid grasping and pulling the capsule, which could lead "
    "to complications."
)
PAPER_INSTRUCTION = ("Carefully remove cortex while managing aspiration to prevent zonular stress and avoid capsule "
                     "grasping or pulling.")


def _stems(text: str) -> set[str]:
    """Crude stems of the content words (independent of the refiner's own lexicons)."""
    stop = {"a", "an", "the", "to", "and", "or", "while", "with", "of", "in", "it's", "is", "be"}
    return {w[:5] for w in re.findall(r"[a-z']+", text.lower()) if w not in stop}


def test_paper_example_keeps_visible_content_and_drops_the_rest():
    out = refine_narration(PAPER_NARRATION)
    assert out == ("Carefully remove cortex to prevent zonular stress, and manage aspiration carefully to avoid "
                   "grasping and pulling the capsule.")
    low = out.lower()
    for kept in ("cortex", "aspiration", "zonular stress", "capsule", "grasping", "pulling"):
        assert kept in low
    for dropped in ("weak", "zonules", "complication", "especially", "important", "could lead"):
        assert dropped not in low
    # Close to the paper's instruction: nearly all of its content stems, few others, much shorter than the narration.
    ours, paper = _stems(out), _stems(PAPER_INSTRUCTION)
    assert len(ours & paper) / len(paper) >= 0.9
    assert len(ours - paper) <= 2
    assert len(out.split()) < 0.7 * len(PAPER_NARRATION.split())


@pytest.mark.parametrize("narration", [
    "Hi everyone, welcome back to my channel!",
    "Please like and subscribe. Thanks for watching!",
    "If you have any questions, leave them in the comments below.",
    "Good morning everyone. Today we have a 68-year-old gentleman with a dense brunescent cataract.",
    "The patient is a 72-year-old woman with a history of diabetes.",
    "Postoperatively the vision was 20/20 and the patient was very happy.",
    "The patient was discharged the same day and did very well.",
    "This case was complicated by a posterior capsule rupture.",
    "This is a really tough case.",
    "Perfect. Beautiful.",
    "So uh yeah that's it.",
    "Let's start.",
    "and that's the end of the case thanks for watching guys",
    "the reason i do this is that the endothelial cell count was low",
    "this is a dense cataract in a patient with pseudoexfoliation",
    "the phaco machine settings are 400 mmHg vacuum and 40 cc per minute flow",
    "It's a close call.",
    "[Music] >> [Applause]",
    "",
    "   \n  ",
])
def test_nothing_visible_gives_empty(narration):
    assert refine_narration(narration) == ""


@pytest.mark.parametrize("narration, instruction", [
    # first person, progressive, future, "let's"
    ("I'm now going to make the incision.", "Make the incision."),
    ("So now we're gently rotating the nucleus with the chopper.", "Gently rotate the nucleus with the chopper."),
    ("Then I make the main incision with a 2.4 mm keratome.", "Make the main incision with a 2.4 mm keratome."),
    ("Okay so now let's go ahead and chop the nucleus", "Chop the nucleus."),
    ("I like to polish the posterior capsule at low vacuum.", "Polish the posterior capsule at low vacuum."),
    ("um so uh we go ahead and create the paracentesis with a 15 degree blade [Music]",
     "Create the paracentesis with a 15 degree blade."),
    ("Dr. Smith makes a 2.2 mm clear corneal incision with the keratome.",
     "Make a 2.2 mm clear corneal incision with the keratome."),
    # passives, nominals, "do"
    ("Next, the anterior chamber is filled with viscoelastic.", "Fill the anterior chamber with viscoelastic."),
    ("As you can see, the IOL is inserted into the capsular bag.", "Insert the IOL into the capsular bag."),
    ("The trypan blue is injected under air to stain the anterior capsule.",
     "Inject the trypan blue under air to stain the anterior capsule."),
    ("The heminucleus is chopped into smaller fragments which are then emulsified.",
     "Chop the heminucleus into smaller fragments and emulsify them."),
    ("Finally the viscoelastic is removed and the wounds are hydrated.",
     "Remove the viscoelastic, and hydrate the wounds."),
    ("Here you can see the capsulorhexis is being completed with forceps.", "Complete the capsulorhexis with forceps."),
    ("Insertion of the lens into the bag is done with an injector.", "Insert the lens into the bag with an injector."),
    ("Hydrodissection.", "Perform hydrodissection."),
    ("I/A is used to aspirate the cortex.", "Use I/A to aspirate the cortex."),
    ("So, we now insert the CTR.", "Insert the CTR."),
    ("In this video, I will show you how to perform a phaco chop.", "Perform a phaco chop."),
    ("so now we are going to do the hydrodissection and you can see the fluid wave", "Perform the hydrodissection."),
    # cautions, negations, reasons and consequences
    ("Don't touch the endothelium with the phaco tip.", "Avoid touching the endothelium with the phaco tip."),
    ("Be careful not to tear the capsule.", "Avoid tearing the capsule."),
    ("Be careful when inserting the lens.", "Carefully insert the lens."),
    ("Remember, never aspirate near the capsule edge.", "Avoid aspirating near the capsule edge."),
    ("We chop the nucleus to reduce the risk of posterior capsule rupture.", "Chop the nucleus."),
    ("The lens is tilted, which may cause endothelial damage in patients with a low cell count.", "Tilt the lens."),
    ("Trypan blue is used to stain the capsule because the red reflex is poor.",
     "Use trypan blue to stain the capsule."),
    ("Now the cortex is aspirated with the I/A handpiece, which can lead to capsule rupture if you are not careful.",
     "Aspirate the cortex with the I/A handpiece."),
    ("It's important to keep the phaco tip in the center of the pupil to avoid damaging the iris.",
     "Keep the phaco tip in the center of the pupil to avoid damaging the iris."),
    # several clauses and sentences
    ("Using the chopper, we split the nucleus into two halves, and then we rotate it 90 degrees.",
     "Use the chopper, split the nucleus into two halves, and rotate it 90 degrees."),
    ("After the nucleus is removed, we aspirate the cortex with the I/A handpiece.",
     "Aspirate the cortex with the I/A handpiece."),
    ("The pupil is small, so I'm inserting a Malyugin ring.", "Insert a Malyugin ring."),
    ("We then insert the IOL, a single-piece acrylic lens, into the bag.",
     "Insert the IOL, a single-piece acrylic lens, into the bag."),
    ("and we're going to rotate the nucleus and we're going to chop it again",
     "Rotate the nucleus, and chop it again."),
    ("Hello everyone. The patient is a 70-year-old man. We begin with a paracentesis. Subscribe for more!",
     "Begin with a paracentesis."),
    # lower-case auto-captions without punctuation
    ("so what we're doing now is we're going in with the phaco probe and we're sculpting a groove",
     "Go in with the phaco probe, and sculpt a groove."),
    ("all right so here we've got a pretty dense nucleus and i'm going to use a little more power",
     "Use a little more power."),
    ("okay now i'm putting some viscoelastic in the anterior chamber",
     "Put some viscoelastic in the anterior chamber."),
    ("what i like to do here is to chop the nucleus horizontally", "Chop the nucleus horizontally."),
    ("the iol is now in the bag and we're going to remove the viscoelastic from behind the lens",
     "Remove the viscoelastic from behind the lens."),
    ("Next we stain the capsule with trypan blue, wait a few seconds, and wash it out with BSS.",
     "Stain the capsule with trypan blue, and wash it out with BSS."),
    ("A capsular tension ring was inserted to support the bag.", "Insert a capsular tension ring to support the bag."),
])
def test_realistic_narrations(narration, instruction):
    assert refine_narration(narration) == instruction


# The sample videos' narrations that rules-1 got wrong (ophora make-narrated-videos), and what a surgeon expects.
@pytest.mark.parametrize("narration, instruction", [
    ("the phaco tip sculpts a deep groove in the nucleus", "Sculpt a deep groove in the nucleus with the phaco tip."),
    ("the second instrument rotates the nucleus to continue sculpting",
     "Rotate the nucleus with the second instrument to continue sculpting."),
    ("Phacoemulsification of the nucleus begins in the capsular bag.",
     "Begin phacoemulsification of the nucleus in the capsular bag."),
    ("The lens haptics are dialed into position with a hook.", "Dial the lens haptics into position with a hook."),
    ("chapter two lens implantation", ""),
])
def test_sample_video_narrations(narration, instruction):
    assert refine_narration(narration) == instruction


@pytest.mark.parametrize("narration, instruction", [
    # a tool as subject: "with the tool", in any tense, singular or plural, with adverbs, "then", "next"
    ("the chopper then splits the nucleus into two halves", "Split the nucleus into two halves with the chopper."),
    ("the phaco tip is sculpting a central groove", "Sculpt a central groove with the phaco tip."),
    ("The keratome created a biplanar clear corneal tunnel.",
     "Create a biplanar clear corneal tunnel with the keratome."),
    ("The phaco probe has emulsified the last quadrant.", "Emulsify the last quadrant with the phaco probe."),
    ("the hook will engage the nucleus and pull it toward the center",
     "Engage the nucleus with the hook and pull it toward the center."),
    ("The forceps grasp the capsular flap and tear it in a circular fashion.",
     "Grasp the capsular flap with the forceps and tear it in a circular fashion."),
    ("both instruments crack the nucleus into two pieces", "Crack the nucleus into two pieces with both instruments."),
    ("the cannula gently injects BSS under the anterior capsule",
     "Gently inject BSS under the anterior capsule with the cannula."),
    ("next the I/A tip aspirates the remaining cortex", "Aspirate the remaining cortex with the I/A tip."),
    ("the injector delivers the lens into the capsular bag",
     "Deliver the lens into the capsular bag with the injector."),
    ("the tip of the phaco probe sculpts the nucleus", "Sculpt the nucleus with the tip of the phaco probe."),
    ("the I/A handpiece aspirates the cortex with low vacuum",
     "Aspirate the cortex with low vacuum using the I/A handpiece."),
    ("so the phaco tip sculpts a groove and then the second instrument rotates the nucleus",
     "Sculpt a groove with the phaco tip, and rotate the nucleus with the second instrument."),
    ("OK so the second instrument is now rotating the nucleus while the phaco tip is emulsifying it",
     "Rotate the nucleus with the second instrument while the phaco tip is emulsifying it."),
    # passives with verbs outside the lexicon, irregular participles, agents, coordinated participles
    ("the ring is threaded into the bag", "Thread the ring into the bag."),
    ("the lens haptics are dialled into position", "Dial the lens haptics into position."),
    ("the iris is stretched with two hooks", "Stretch the iris with two hooks."),
    ("The nucleus was broken into four quadrants.", "Break the nucleus into four quadrants."),
    ("the red reflex is visualized through the microscope", "Visualize the red reflex through the microscope."),
    ("the nucleus is rotated by the second instrument", "Rotate the nucleus with the second instrument."),
    ("the wound is hydrated by the assistant", "Hydrate the wound."),
    ("the eye is prepped and draped in the usual sterile fashion",
     "Prep and drape the eye in the usual sterile fashion."),
    ("the fragments are brought to the center and emulsified",
     "Bring the fragments to the center and emulsify them."),
    ("the nucleus is chopped and then rotated 90 degrees", "Chop the nucleus and then rotate it 90 degrees."),
    ("the flap is grasped with curved and angled forceps", "Grasp the flap with curved and angled forceps."),
    # a named step that begins, continues or is completed
    ("Sculpting continues until the groove is deep enough.", "Continue sculpting until the groove is deep enough."),
    ("The capsulorhexis then begins at the center of the anterior capsule.",
     "Begin the capsulorhexis at the center of the anterior capsule."),
    ("aspiration of the cortex starts at the subincisional region",
     "Start aspiration of the cortex at the subincisional region."),
    ("Cortical cleanup is completed with the I/A handpiece.", "Complete cortical cleanup with the I/A handpiece."),
    # a person as subject, verbs outside the lexicon
    ("the assistant irrigates the cornea to keep it clear", "Irrigate the cornea to keep it clear."),
    ("the surgeon stretches the pupil with two hooks", "Stretch the pupil with two hooks."),
    ("they then reposition the IOL in the bag", "Reposition the IOL in the bag."),
    ("we're now bisecting the nucleus with the chopper", "Bisect the nucleus with the chopper."),
    ("he nicks the anterior capsule with the cystotome", "Nick the anterior capsule with the cystotome."),
    # titles and chapter headings show nothing; narration after one is kept
    ("Part 3: Phacoemulsification", ""),
    ("step 1 - incisions", ""),
    ("Introduction", ""),
    ("introduction to manual small incision cataract surgery", ""),
    ("Chapter 4. We now insert the lens.", "Insert the lens."),
    ("step two we make the incision", "Make the incision."),
    ("Step one is to make the incision.", "Make the incision."),
    # descriptions stay descriptions: no "Perform" before a verb, no instruction from a state or a likeness
    ("Hydrodissection frees the nucleus from the capsule.", "Hydrodissection frees the nucleus from the capsule."),
    ("the phaco tip stays in the center of the pupil", "The phaco tip stays in the center of the pupil."),
    ("the hook is shaped like an L", "The hook is shaped like an L."),
    ("the pupil is poorly dilated", "The pupil is poorly dilated."),
])
def test_subjects_passives_steps_and_headings(narration, instruction):
    assert refine_narration(narration) == instruction


@pytest.mark.parametrize("word, base, kind", [
    ("sculpts", "sculpt", "s"), ("washes", "wash", "s"), ("bisects", "bisect", "s"), ("emulsifies", "emulsify", "s"),
    ("dialed", "dial", "past"), ("dialled", "dial", "past"), ("chopped", "chop", "past"), ("used", "use", "past"),
    ("sutured", "suture", "past"), ("handled", "handle", "past"), ("nudged", "nudge", "past"),
    ("filled", "fill", "past"), ("opened", "open", "past"), ("threaded", "thread", "past"),
    ("emulsified", "emulsify", "past"), ("taken", "take", "past"), ("brought", "bring", "past"),
    ("torn", "tear", "past"), ("cut", "cut", "past"), ("rotating", "rotate", "ing"), ("tying", "tie", "ing"),
    ("stabilizing", "stabilize", "ing"), ("placing", "place", "ing"),
])
def test_verb_forms_by_morphology_and_irregular_table(word, base, kind):
    assert verb_form(word)[0] == base and kind in verb_form(word)[1]


def test_verbs_that_do_not_act_and_function_words_are_not_actions():
    assert action_base("seen", {"past"}) is None and action_base("damaged", {"past"}) is None
    assert verb_form("the") is None and verb_form("with") is None
    assert action_base("rotated", {"past"}) == "rotate" and action_base("rotated", {"s"}) is None


def test_caption_artifacts_bom_crlf_and_rolling_repeats():
    narration = ("\ufeff<i>We now make the incision.</i>\r\nWe now make the incision.\r\n"
                 "\u266a [Music] Then we fill the chamber.")
    assert refine_narration(narration) == "Make the incision, and fill the chamber."


def test_abbreviations_and_decimals_do_not_split_sentences():
    assert refine_narration("Dr. Lee makes a 2.75 mm incision, e.g. with a diamond knife.") == (
        "Make a 2.75 mm incision, e.g. with a diamond knife.")


def test_max_words_bounds_the_instruction():
    narration = " ".join(f"We then rotate the nucleus {n} times." for n in range(1, 30))
    for limit in (5, 12, 60):
        out = refine_narration(narration, max_words=limit)
        assert 0 < len(out.split()) <= limit
        assert out[0].isupper() and out.endswith(".")


def test_refiner_keeps_length_order_and_is_deterministic():
    narrations = ["Subscribe!", "We inject viscoelastic.", "", "We inject viscoelastic.", PAPER_NARRATION]
    refiner = make_refiner()
    first = refiner.refine(narrations)
    assert first == make_refiner(RefineConfig(backend="rules")).refine(narrations)
    assert first == ["", "Inject viscoelastic.", "", "Inject viscoelastic.", refine_narration(PAPER_NARRATION)]
    assert refiner.name == "rules" and refiner.version == "rules-3"
    assert refiner.summary()["counts"] == {"refined": 5, "empty": 2}


# ---------------------------------------------------------------------------------------------- openai backend

KEY = "sk-test-0123456789abcdef"


class ChatServer:
    """A chat-completions server on 127.0.0.1 whose answer to each narration follows a script.

    `script[narration]` is a list of steps used one per request (the last one repeats): an answer string, or a
    dict with `status`, `body` (raw bytes), `delay` (seconds before answering) and `headers`.
    """

    def __init__(self) -> None:
        self.script: dict[str, list] = {}
        self.requests: list[dict] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    narration = body["messages"][-1]["content"]
                    steps = server.script.get(narration, [f"Refined: {narration}"])
                    step = steps.pop(0) if len(steps) > 1 else steps[0]
                try:
                    self._answer(step)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _answer(self, step):
                if self.headers.get("Authorization") != f"Bearer {KEY}":
                    step = {"status": 401, "body": b'{"error": "bad key"}'}
                if isinstance(step, str):
                    step = {"body": json.dumps({"choices": [{"message": {"role": "assistant", "content": step}}]})}
                time.sleep(step.get("delay", 0))
                body = step["body"].encode() if isinstance(step["body"], str) else step["body"]
                self.send_response(step.get("status", 200))
                for name, value in step.get("headers", {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # a client that timed out has closed its socket: nothing to report

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, KEY)
    chat = ChatServer()
    yield chat
    chat.close()


def _llm(server: ChatServer, tmp_path: Path | None = None, **overrides) -> RefineConfig:
    settings = dict(backend="openai", url=server.url, model="qwen-test", timeout=2.0, retries=2, backoff=0.01,
                    max_backoff=0.05, concurrency=4, cache_dir=tmp_path / "cache" if tmp_path else None)
    return RefineConfig(**(settings | overrides))


def test_openai_answers_in_order_with_the_protocol(server):
    narrations = ["We make the incision.", "", "We fill the chamber.", "We make the incision."]
    refiner = make_refiner(_llm(server))
    assert refiner.refine(narrations) == ["Refined: We make the incision.", "", "Refined: We fill the chamber.",
                                          "Refined: We make the incision."]
    assert len(server.requests) == 2  # duplicates and empty narrations are not sent
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["auth"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "qwen-test" and body["temperature"] == 0 and body["max_tokens"] == 128
    assert body["messages"][0] == {"role": "system", "content": load_prompt("refine_v1").text}
    assert "NONE" in body["messages"][0]["content"]
    assert refiner.name == "openai" and refiner.version.startswith("refine_v1-")
    assert refiner.summary()["counts"]["asked"] == 2


def test_openai_accepts_a_full_endpoint_url_and_normalises_answers(server):
    server.script = {"a": ['"Insert the IOL."'], "b": ["Instruction: Fill the chamber."], "c": ["NONE"],
                     "d": ["**Rotate the nucleus.**"]}
    refiner = make_refiner(_llm(server, url=server.url + "/chat/completions/"))
    assert refiner.refine(["a", "b", "c", "d"]) == ["Insert the IOL.", "Fill the chamber.", "", "Rotate the nucleus."]


@pytest.mark.parametrize("failure", [
    {"status": 500, "body": "boom"},
    {"status": 503, "body": "overloaded"},
    {"status": 429, "body": "slow down", "headers": {"Retry-After": "0"}},
    {"status": 200, "body": "<html>not json</html>"},
    {"status": 200, "body": '{"choices": []}'},
    "Sure, here is the instruction: Insert the IOL.",
    "Insert the IOL.\nThis keeps the capsule safe.",
    "I'm sorry, I cannot help with medical content.",
    "",
])
def test_openai_retries_a_failure_then_succeeds(server, failure, caplog):
    caplog.set_level(logging.INFO)
    server.script = {"n": [failure, "Insert the IOL."]}
    refiner = make_refiner(_llm(server))
    assert refiner.refine(["n"]) == ["Insert the IOL."]
    assert len(server.requests) == 2
    assert refiner.summary()["counts"]["retries"] == 1
    assert "retry 1/2" in caplog.text and KEY not in caplog.text


def test_openai_timeout_is_retried_then_reported(server):
    hang = {"body": "x", "delay": 1.0}
    server.script = {"slow once": [hang, "Chop the nucleus."], "hangs": [hang]}
    refiner = make_refiner(_llm(server, timeout=0.2, retries=1))
    assert refiner.refine(["slow once"]) == ["Chop the nucleus."]
    with pytest.raises(EndpointError, match=r"no answer after 2 attempts \(timed out after 0.2 s\)"):
        refiner.refine(["hangs"])


@pytest.mark.parametrize("failure, reason", [
    ({"status": 500, "body": "boom"}, "HTTP 500"),
    ({"status": 429, "body": "later"}, "HTTP 429"),
    ({"status": 200, "body": "{not json"}, "malformed response"),
])
def test_openai_gives_up_after_retries_with_a_clear_error(server, failure, reason):
    server.script = {"n": [failure]}
    with pytest.raises(EndpointError) as caught:
        make_refiner(_llm(server, retries=2)).refine(["n"])
    assert isinstance(caught.value, OphoraError)
    assert reason in str(caught.value) and "after 3 attempts" in str(caught.value)
    assert len(server.requests) == 3


def test_openai_client_errors_are_not_retried(server):
    server.script = {"n": [{"status": 404, "body": '{"error": "model qwen-test not found"}'}]}
    with pytest.raises(EndpointError, match="HTTP 404.*--llm-model 'qwen-test'.*not found"):
        make_refiner(_llm(server)).refine(["n"])
    assert len(server.requests) == 1


def test_openai_wrong_key_is_reported_without_the_key(server, monkeypatch, caplog):
    wrong = "sk-wrong-secret-42"
    monkeypatch.setenv(API_KEY_ENV, wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(EndpointError, match=f"HTTP 401.*{API_KEY_ENV}") as caught:
        make_refiner(_llm(server)).refine(["n"])
    assert server.requests[0]["auth"] == f"Bearer {wrong}" and len(server.requests) == 1
    assert wrong not in str(caught.value) and wrong not in caplog.text


@pytest.mark.parametrize("answer", ["Sure, here is the instruction: Insert the IOL.", "Line one.\nLine two.",
                                    "As an AI, I cannot do that.", " ".join(["word"] * 61)])
def test_openai_unusable_answers_follow_on_invalid(server, answer):
    narration = "We then insert the IOL into the bag."
    server.script = {narration: [answer]}
    assert make_refiner(_llm(server, retries=1)).refine([narration]) == ["Insert the IOL into the bag."]  # rules
    assert make_refiner(_llm(server, retries=1, on_invalid="empty")).refine([narration]) == [""]
    with pytest.raises(LLMAnswerError, match="no usable instruction after 2 attempts"):
        make_refiner(_llm(server, retries=1, on_invalid="error")).refine([narration])


def test_openai_requests_run_concurrently(server):
    narrations = [f"We rotate the nucleus {i} times." for i in range(8)]
    server.script = {n: [{"body": json.dumps({"choices": [{"message": {"content": "Rotate the nucleus."}}]}),
                          "delay": 0.2}] for n in narrations}
    assert make_refiner(_llm(server, concurrency=4)).refine(narrations) == ["Rotate the nucleus."] * 8
    assert 2 <= server.max_in_flight <= 4


def test_openai_cache_makes_a_rerun_ask_nothing(server, tmp_path):
    narrations = ["We make the incision.", "We fill the chamber.", "Hello!"]
    server.script = {"Hello!": ["NONE"]}
    first = make_refiner(_llm(server, tmp_path)).refine(narrations)
    assert first == ["Refined: We make the incision.", "Refined: We fill the chamber.", ""]
    assert len(server.requests) == 3

    rerun = make_refiner(_llm(server, tmp_path))
    assert rerun.refine(narrations) == first
    assert len(server.requests) == 3  # the server saw no second request
    assert rerun.summary()["counts"]["cached"] == 3

    files = sorted((tmp_path / "cache").rglob("*"))
    entries = [json.loads(f.read_text()) for f in files if f.is_file()]
    assert len(entries) == 3 and not [f for f in files if "partial" in f.name]
    assert {e["narration"]: e["instruction"] for e in entries}["Hello!"] == ""
    assert all(KEY not in f.read_text() for f in files if f.is_file())

    for broken, text in zip([f for f in files if f.is_file()][:2], ["[1, 2]", '{"instruction": '], strict=True):
        broken.write_text(text)  # a damaged entry is asked again, not trusted
    assert make_refiner(_llm(server, tmp_path)).refine(narrations) == first
    assert len(server.requests) == 5

    make_refiner(_llm(server, tmp_path, model="other-model")).refine(narrations[:1])
    assert len(server.requests) == 6  # the model is part of the key
    prompt = tmp_path / "my_prompt.txt"
    prompt.write_text("Rewrite the narration as an instruction. Answer NONE if nothing is visible.")
    make_refiner(_llm(server, tmp_path, prompt=str(prompt))).refine(narrations[:1])
    assert len(server.requests) == 7  # so is the prompt version


def test_openai_failed_narrations_are_not_cached(server, tmp_path):
    server.script = {"bad": ["Sure! Insert the IOL."], "good": ["Insert the IOL."]}
    make_refiner(_llm(server, tmp_path, retries=0)).refine(["bad", "good"])
    server.script = {"bad": ["Insert the lens."]}
    asked = len(server.requests)
    rerun = make_refiner(_llm(server, tmp_path, retries=0)).refine(["bad", "good"])
    assert rerun == ["Insert the lens.", "Insert the IOL."]
    assert len(server.requests) == asked + 1


def test_prompt_version_follows_its_content(tmp_path):
    packaged = load_prompt("refine_v1")
    assert packaged.version.startswith("refine_v1-") and "imperative" in packaged.text
    one, two = tmp_path / "p_v2.txt", tmp_path / "p_v2b.txt"
    one.write_text("Prompt A")
    two.write_text("Prompt B")
    assert load_prompt(str(one)).version.split("-")[1] != load_prompt(str(two)).version.split("-")[1]
    with pytest.raises(ConfigError, match="refine_v9"):
        load_prompt("refine_v9")


# ---------------------------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("settings, message", [
    ({"backend": "gpt"}, "backend must be one of rules, openai"),
    ({"backend": "openai", "model": "m"}, "--llm-url"),
    ({"backend": "openai", "url": "localhost:8000", "model": "m"}, "--llm-url"),
    ({"backend": "openai", "url": "http://h/v1"}, "--llm-model"),
    ({"backend": "openai", "url": "http://h/v1", "model": "m", "concurrency": 0}, "concurrency must be > 0"),
    ({"backend": "openai", "url": "http://h/v1", "model": "m", "on_invalid": "ignore"}, "--llm-on-invalid"),
    ({"max_words": 0}, "max_words"),
])
def test_config_mistakes_are_caught_up_front(settings, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        RefineConfig(**settings)


def test_cli_helpers_build_the_config(tmp_path):
    parser = argparse.ArgumentParser()
    add_options(parser, RefineConfig)
    assert from_args(RefineConfig, parser.parse_args([])) == RefineConfig()
    args = parser.parse_args(["--refiner", "openai", "--llm-url", "http://h:8000/v1", "--llm-model", "Qwen2.5-72B",
                              "--llm-concurrency", "16", "--llm-timeout", "30", "--llm-on-invalid", "error",
                              "--llm-cache", str(tmp_path / "refine_cache")])
    config = from_args(RefineConfig, args)
    assert (config.backend, config.url, config.model, config.concurrency, config.timeout, config.on_invalid) == (
        "openai", "http://h:8000/v1", "Qwen2.5-72B", 16, 30.0, "error")
    assert config.cache_dir == tmp_path / "refine_cache"


@pytest.mark.parametrize("backend", ["rules", "openai"])
def test_narrations_must_be_a_list_of_text(backend):
    refiner = make_refiner(RefineConfig(backend=backend, url="http://127.0.0.1:9/v1", model="m"))
    with pytest.raises(InputError, match="narration 1 is float"):
        refiner.refine(["We make the incision.", float("nan")])
    with pytest.raises(InputError, match="not one string"):
        refiner.refine("We make the incision.")


@pytest.mark.parametrize("backend", ["rules", "openai"])
def test_refiners_survive_pickling_for_worker_processes(server, backend):
    refiner = make_refiner(_llm(server, backend=backend))
    copy = pickle.loads(pickle.dumps(refiner))
    assert copy.refine(["We make the incision."]) == refiner.refine(["We make the incision."])
    assert (copy.name, copy.version) == (refiner.name, refiner.version)


def test_rules_never_fail_on_odd_text():
    """Random mixtures of narration fragments, punctuation, markup and odd Unicode: always a well-formed answer."""
    rng = random.Random(0)
    pieces = ["we", "I'm", "going to", "the", "IOL", "is", "inserted", "be careful not to", "don't", "nucleus", ",",
              ".", "?", ";", "\n", "\r\n", "and", "which could lead to", "[Music]", "<b>", "é", "\u200b", "2.2 mm",
              "Dr.", "e.g.", "especially", "capsule", "removal", "of", "hydrodissection", "", "  ", "'", '"', "-",
              "I/A", "subscribe", "rotating", "gently", "\ufeff", "😀", "…", "the phaco tip", "sculpts", "begins",
              "chapter two", "step 1 -", "by the assistant", "dialed", "are", "and then", "the second instrument",
              "forceps", "with", "to", "introduction", "taken", "the surgeon", "they"]
    for _ in range(2000):
        narration = " ".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        out = refine_narration(narration, max_words=25)
        assert out == "" or (out[0].isupper() or not out[0].isalpha()) and out.endswith(".")
        assert len(out.split()) <= 25
        assert "\n" not in out


def test_openai_without_a_key_sends_no_authorization(server, monkeypatch):
    monkeypatch.delenv(API_KEY_ENV)
    with pytest.raises(EndpointError, match=f"HTTP 401.*check the key in {API_KEY_ENV}"):
        make_refiner(_llm(server)).refine(["n"])
    assert server.requests[0]["auth"] is None
